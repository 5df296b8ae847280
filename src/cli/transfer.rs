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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::ops::{Output, print_json};
use crate::client::{Client, Upload, UploadWatch};
use crate::error::Error;

/// Name of the manifest key under a prefix.
pub const MANIFEST_NAME: &str = ".ringkv-manifest";

/// Version of the manifest's format.
const MANIFEST_FORMAT: u32 = 1;

/// Files moved at once by default: enough to hide per-request latency on a
/// LAN, few enough not to crowd a small cluster.
const DEFAULT_PARALLEL: usize = 8;

/// Page size of `/keys` when listing a prefix (the server's maximum).
const LIST_PAGE: usize = 1000;

/// Attempts at one file's download when its body breaks off midway (the
/// client already retries requests that find no node).
const DOWNLOAD_ATTEMPTS: usize = 2;

/// `upload DIR [--prefix P]`.
#[derive(Debug, Parser)]
pub struct UploadArgs {
    /// The directory whose files are stored.
    dir: PathBuf,
    /// Key prefix: the file `a/b.txt` becomes the key `PREFIX/a/b.txt`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Files sent at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    parallel: usize,
    /// Write quorum of each file: 1…N or `all`.
    #[arg(short, long)]
    w: Option<String>,
    /// Do not read each file back after storing it (its checksum is still
    /// recorded in the manifest for `download`).
    #[arg(long)]
    no_verify: bool,
}

/// `download DIR [--prefix P]`.
#[derive(Debug, Parser)]
pub struct DownloadArgs {
    /// The directory the files are written to (created if missing; files
    /// already there are replaced).
    dir: PathBuf,
    /// Key prefix: the key `PREFIX/a/b.txt` becomes the file `a/b.txt`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Files fetched at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    parallel: usize,
    /// Read quorum of each file: 1…N or `all`.
    #[arg(short, long)]
    r: Option<String>,
}

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

/// One file that could not be moved.
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

/// The local path of the relative key path `rel` under `root`, or why it
/// is refused: only plain names separated by single `/` are accepted, so
/// that no key can write outside `root`.
pub fn local_path(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() {
        return Err("the path is empty".into());
    }
    if rel.starts_with('/') {
        return Err("the path is absolute".into());
    }
    let mut path = root.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" => return Err("the path has an empty component (`//` or a trailing `/`)".into()),
            "." | ".." => return Err(format!("the path has a `{part}` component")),
            p if p.contains('\0') => return Err("the path has a NUL byte".into()),
            p => path.push(p),
        }
    }
    Ok(path)
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

/// A file found under DIR.
#[derive(Debug)]
struct LocalFile {
    /// Path relative to DIR, `/`-separated.
    rel: String,
    /// Where it is.
    path: PathBuf,
    /// Its length when listed.
    size: u64,
}

/// Every regular file under `root` (following links to files, not to
/// directories, which could loop), sorted; plus the entries skipped and
/// why.
fn walk(root: &Path) -> anyhow::Result<(Vec<LocalFile>, Vec<Failure>)> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if rel_dir.is_empty() => {
                return Err(err).with_context(|| format!("cannot read {}", dir.display()));
            }
            Err(err) => {
                problems.push(Failure {
                    path: rel_dir.clone(),
                    key: None,
                    error: format!("cannot read the directory: {err}"),
                    code: "io",
                });
                continue;
            }
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                problems.push(Failure {
                    path: format!("{rel_dir}{}", name.to_string_lossy()),
                    key: None,
                    error: "the name is not UTF-8, so it cannot be a key".into(),
                    code: "invalid_input",
                });
                continue;
            };
            let rel = format!("{rel_dir}{name}");
            let link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() && link => problems.push(Failure {
                    path: rel,
                    key: None,
                    error: "a link to a directory: not followed".into(),
                    code: "skipped",
                }),
                Ok(meta) if meta.is_dir() => pending.push((path, format!("{rel}/"))),
                Ok(meta) if meta.is_file() => files.push(LocalFile {
                    rel,
                    path,
                    size: meta.len(),
                }),
                Ok(_) => problems.push(Failure {
                    path: rel,
                    key: None,
                    error: "not a regular file".into(),
                    code: "skipped",
                }),
                Err(err) => problems.push(Failure {
                    path: rel,
                    key: None,
                    error: format!("cannot read it: {err}"),
                    code: "io",
                }),
            }
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((files, problems))
}

/// Hashes and counts an upload's bytes as they are sent, moving the bar;
/// a new attempt starts over.
struct SentBytes {
    /// The bar all files move.
    bar: ProgressBar,
    /// The hash and length of what this attempt sent so far.
    seen: Mutex<(blake3::Hasher, u64)>,
}

impl SentBytes {
    fn lock(&self) -> std::sync::MutexGuard<'_, (blake3::Hasher, u64)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl UploadWatch for SentBytes {
    fn restart(&self) {
        let mut seen = self.lock();
        self.bar.dec(seen.1);
        *seen = (blake3::Hasher::new(), 0);
    }

    fn sent(&self, piece: &[u8]) {
        let mut seen = self.lock();
        seen.0.update(piece);
        seen.1 += piece.len() as u64;
        self.bar.inc(piece.len() as u64);
    }
}

/// Reads `key` back; its blake3, length and version timestamp, or `None`
/// when it is gone.
async fn read_back(
    client: &Client,
    key: &str,
    r: Option<&str>,
) -> crate::error::Result<Option<(String, u64, u64)>> {
    let Some(response) = client.get(key, r).await? else {
        return Ok(None);
    };
    let timestamp = response
        .headers()
        .get("x-ringkv-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut hasher = blake3::Hasher::new();
    let mut length = 0;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| Error::Aborted {
            reason: format!("the value of {key} broke off: {e}"),
        })?;
        hasher.update(&piece);
        length += piece.len() as u64;
    }
    Ok(Some((
        hasher.finalize().to_hex().to_string(),
        length,
        timestamp,
    )))
}

/// Stores one file, checks it, and returns its manifest entry.
async fn upload_one(
    client: &Client,
    file: &LocalFile,
    key: &str,
    args: &UploadArgs,
    bar: &ProgressBar,
) -> Result<ManifestEntry, Failure> {
    let fail = |error: String, code: &'static str| Failure {
        path: file.rel.clone(),
        key: Some(key.to_string()),
        error,
        code,
    };
    let watch = Arc::new(SentBytes {
        bar: bar.clone(),
        seen: Mutex::new((blake3::Hasher::new(), 0)),
    });
    let upload = Upload::WatchedFile(file.path.clone(), watch.clone());
    let reply = match client.put(key, upload, None, args.w.as_deref()).await {
        Ok(reply) => reply,
        Err(err) => return Err(fail(super::explain(&err, "-w"), code_of(&err))),
    };
    let (hash, sent) = {
        let seen = watch.lock();
        (seen.0.finalize().to_hex().to_string(), seen.1)
    };
    let entry = ManifestEntry {
        size: sent,
        blake3: hash,
        timestamp: reply.timestamp,
    };
    if args.no_verify {
        return Ok(entry);
    }
    match read_back(client, key, None).await {
        Ok(Some((hash, size, _))) if hash == entry.blake3 && size == entry.size => Ok(entry),
        Ok(Some((_, _, timestamp))) if timestamp != entry.timestamp => Err(fail(
            format!(
                "read back, the key holds another version ({timestamp}) than the one stored \
                 ({}): another client wrote it meanwhile",
                entry.timestamp
            ),
            "checksum_mismatch",
        )),
        Ok(Some((hash, size, _))) => Err(fail(
            format!(
                "read back, the value differs: {size} bytes with blake3 {hash}, {} bytes with \
                 blake3 {} were sent",
                entry.size, entry.blake3
            ),
            "checksum_mismatch",
        )),
        Ok(None) => Err(fail(
            "stored, but not found when read back (deleted meanwhile?)".into(),
            "missing",
        )),
        Err(err) => Err(fail(
            format!(
                "stored, but reading it back failed: {}",
                super::explain(&err, "-r")
            ),
            code_of(&err),
        )),
    }
}

/// The manifest stored under `key`, an empty one when there is none, or
/// why it is unusable.
async fn fetch_manifest(
    client: &Client,
    key: &str,
) -> crate::error::Result<Result<Option<Manifest>, String>> {
    let Some(bytes) = client.get_bytes(key).await? else {
        return Ok(Ok(None));
    };
    Ok(serde_json::from_slice::<Manifest>(&bytes)
        .map(Some)
        .map_err(|e| format!("the manifest {key} is not one: {e}")))
}

/// `ringkv upload`.
pub async fn upload(args: UploadArgs, client: Client, out: Output) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let prefix = normalize_prefix(&args.prefix);
    let manifest_key = key_for(&prefix, MANIFEST_NAME);
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );
    let root = args.dir.clone();
    let (files, mut failures) = tokio::task::spawn_blocking(move || walk(&root))
        .await
        .context("the directory walk stopped")??;
    let (files, refused): (Vec<LocalFile>, Vec<LocalFile>) =
        files.into_iter().partition(|f| !is_manifest(&f.rel));
    failures.extend(refused.into_iter().map(|f| Failure {
        key: Some(key_for(&prefix, &f.rel)),
        path: f.rel,
        error: format!("{MANIFEST_NAME} is the name of ringkv's manifests; rename the file"),
        code: "invalid_input",
    }));
    let (files, bad_keys): (Vec<LocalFile>, Vec<LocalFile>) = files
        .into_iter()
        .partition(|f| crate::key::validate(&key_for(&prefix, &f.rel)).is_ok());
    failures.extend(bad_keys.into_iter().map(|f| {
        Failure {
            error: crate::key::validate(&key_for(&prefix, &f.rel))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            key: Some(key_for(&prefix, &f.rel)),
            path: f.rel,
            code: "invalid_input",
        }
    }));
    // The first request: a cluster that cannot be reached fails here,
    // before any work.
    let mut manifest = match fetch_manifest(&client, &manifest_key).await? {
        Ok(found) => found.unwrap_or_default(),
        Err(why) => {
            if !out.json {
                eprintln!("warning: {why}; writing a new one");
            }
            Manifest::default()
        }
    };
    manifest.format = MANIFEST_FORMAT;
    if !out.json {
        for failure in &failures {
            let what = if failure.code == "skipped" {
                "SKIPPED"
            } else {
                "FAILED"
            };
            eprintln!("{what} {}: {}", failure.path, failure.error);
        }
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = progress_bar(total, out);
    let count = files.len();
    let mut done = 0;
    bar.set_message(format!("0/{count} files"));
    let mut results = futures::stream::iter(files.iter())
        .map(|file| {
            let (client, args, bar, prefix) = (&client, &args, &bar, &prefix);
            async move {
                let key = key_for(prefix, &file.rel);
                (file, upload_one(client, file, &key, args, bar).await)
            }
        })
        .buffer_unordered(args.parallel);
    let mut bytes = 0;
    let mut stored = 0;
    while let Some((file, result)) = results.next().await {
        done += 1;
        bar.set_message(format!("{done}/{count} files"));
        match result {
            Ok(entry) => {
                bytes += entry.size;
                stored += 1;
                manifest.files.insert(file.rel.clone(), entry);
            }
            Err(failure) => failed(&bar, out, failure, &mut failures),
        }
    }
    drop(results);
    bar.finish_and_clear();
    let encoded = serde_json::to_vec_pretty(&manifest).context("cannot encode the manifest")?;
    let manifest_error = client
        .put(
            &manifest_key,
            Upload::Bytes(encoded.into()),
            Some("application/json"),
            args.w.as_deref(),
        )
        .await
        .err();
    if let Some(err) = &manifest_error {
        failures.push(Failure {
            path: MANIFEST_NAME.into(),
            key: Some(manifest_key.clone()),
            error: format!(
                "the files are stored but their manifest is not, so download cannot check \
                 them; run the upload again: {}",
                super::explain(err, "-w")
            ),
            code: code_of(err),
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    let failed = failures.iter().filter(|f| f.code != "skipped").count();
    if out.json {
        print_json(&json!({
            "ok": failed == 0,
            "dir": args.dir,
            "prefix": prefix,
            "manifest": manifest_key,
            "files": stored,
            "bytes": bytes,
            "seconds": seconds,
            "mb_per_s": rate(bytes, seconds),
            "verified": !args.no_verify,
            "failed": failures.iter().filter(|f| f.code != "skipped").collect::<Vec<_>>(),
            "skipped": failures.iter().filter(|f| f.code == "skipped").collect::<Vec<_>>(),
        }))?;
    } else {
        if let Some(err) = &manifest_error {
            eprintln!("FAILED {manifest_key}: {}", super::explain(err, "-w"));
        }
        let verb = if failed == 0 {
            "UPLOAD OK"
        } else {
            "UPLOAD FAILED"
        };
        let failed_part = if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        };
        println!(
            "{verb}: {stored} files{failed_part}, {bytes} bytes in {seconds:.2} s ({:.2} MB/s){}, manifest {manifest_key}",
            rate(bytes, seconds),
            if args.no_verify {
                ""
            } else {
                ", read back and checked"
            },
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// -------------------------------------------------------------- download --

/// A key to fetch.
#[derive(Debug)]
struct Wanted {
    /// The key.
    key: String,
    /// Its path relative to the prefix.
    rel: String,
    /// What the upload recorded, if a manifest names it.
    expected: Option<ManifestEntry>,
    /// Its size as listed (for the bar).
    size: u64,
}

/// How one file ended.
enum Fetched {
    /// Written, its checksum matching the manifest's.
    Verified(u64),
    /// Written; no manifest names it.
    Unverified(u64),
    /// Listed, but deleted since: nothing written.
    Gone,
}

/// Every key under `prefix` on every live member, with the newest
/// (timestamp, size) any of them lists; and warnings about members that
/// could not list theirs.
async fn list_cluster(
    client: &Client,
    prefix: &str,
) -> anyhow::Result<(BTreeMap<String, (u64, u64)>, Vec<String>)> {
    let ring = client.ring().await?;
    let mut members = Vec::new();
    let mut warnings = Vec::new();
    for member in ring["members"].as_array().into_iter().flatten() {
        let Some(node) = member["node"].as_str() else {
            continue;
        };
        if member["state"] == "removed" {
            continue;
        }
        if member["live"] == false {
            warnings.push(format!(
                "{node} is down: keys only it holds are not listed (with N > 1 every key has \
                 another replica)"
            ));
            continue;
        }
        members.push(node.to_string());
    }
    let mut keys: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut listed = 0;
    for node in &members {
        let one = client.for_node(node);
        let mut after: Option<String> = None;
        let result: crate::error::Result<()> = async {
            loop {
                let page = one.keys(prefix, after.as_deref(), LIST_PAGE).await?;
                for entry in page["keys"].as_array().into_iter().flatten() {
                    let Some(key) = entry["key"].as_str() else {
                        continue;
                    };
                    let found = (
                        entry["timestamp"].as_u64().unwrap_or(0),
                        entry["size"].as_u64().unwrap_or(0),
                    );
                    let slot = keys.entry(key.to_string()).or_insert(found);
                    if found.0 > slot.0 {
                        *slot = found;
                    }
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => return Ok(()),
                }
            }
        }
        .await;
        match result {
            Ok(()) => listed += 1,
            Err(err) => warnings.push(format!(
                "cannot list the keys of {node}: {err}; keys only it holds are not listed"
            )),
        }
    }
    anyhow::ensure!(
        listed > 0,
        "no member could list its keys: {}",
        warnings.join("; ")
    );
    Ok((keys, warnings))
}

/// Fetches one key into `path` through a temporary file beside it, which
/// becomes `path` only when the checksum matches.
async fn download_one(
    client: &Client,
    root: &Path,
    wanted: &Wanted,
    r: Option<&str>,
    bar: &ProgressBar,
) -> Result<Fetched, Failure> {
    let fail = |error: String, code: &'static str| Failure {
        path: wanted.rel.clone(),
        key: Some(wanted.key.clone()),
        error,
        code,
    };
    let path = local_path(root, &wanted.rel).map_err(|why| {
        fail(
            format!("refused: {why}, so it would not stay inside the directory"),
            "unsafe_path",
        )
    })?;
    let parent = path.parent().unwrap_or(root).to_path_buf();
    let made = parent.clone();
    let root_owned = root.to_path_buf();
    tokio::task::spawn_blocking(move || make_dirs_inside(&root_owned, &made))
        .await
        .map_err(|e| fail(format!("cannot create {}: {e}", parent.display()), "io"))?
        .map_err(|(why, code)| fail(why, code))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!(".{name}.ringkv-part"));
    let mut last = String::new();
    for _ in 0..DOWNLOAD_ATTEMPTS {
        let response = match client.get(&wanted.key, r).await {
            Ok(Some(response)) => response,
            Ok(None) if wanted.expected.is_some() => {
                return Err(fail(
                    "the upload stored it, but it is not found now (deleted since?)".into(),
                    "missing",
                ));
            }
            Ok(None) => return Ok(Fetched::Gone),
            Err(err) => return Err(fail(super::explain(&err, "-r"), code_of(&err))),
        };
        let _ = tokio::fs::remove_file(&temp).await;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(|e| fail(format!("cannot create {}: {e}", temp.display()), "io"))?;
        let mut hasher = blake3::Hasher::new();
        let mut length = 0u64;
        let mut body = response.bytes_stream();
        let mut broke = None;
        while let Some(piece) = body.next().await {
            let piece = match piece {
                Ok(piece) => piece,
                Err(err) => {
                    broke = Some(format!("the value broke off after {length} bytes: {err}"));
                    break;
                }
            };
            if let Err(err) = file.write_all(&piece).await {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(fail(
                    format!("cannot write {}: {err}", temp.display()),
                    "io",
                ));
            }
            hasher.update(&piece);
            length += piece.len() as u64;
            bar.inc(piece.len() as u64);
        }
        if let Some(why) = broke {
            bar.dec(length);
            last = why;
            continue;
        }
        if let Err(err) = file.flush().await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(fail(
                format!("cannot write {}: {err}", temp.display()),
                "io",
            ));
        }
        drop(file);
        let hash = hasher.finalize().to_hex().to_string();
        if let Some(expected) = &wanted.expected
            && (expected.blake3 != hash || expected.size != length)
        {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(fail(
                format!(
                    "checksum mismatch: the key holds {length} bytes with blake3 {hash}, the \
                     upload stored {} bytes with blake3 {}; the key was changed after the \
                     upload (or is damaged). Not written; `ringkv get {} -o FILE` fetches it \
                     anyway",
                    expected.size, expected.blake3, wanted.key
                ),
                "checksum_mismatch",
            ));
        }
        tokio::fs::rename(&temp, &path).await.map_err(|e| {
            fail(
                format!("cannot move the file into place at {}: {e}", path.display()),
                "io",
            )
        })?;
        return Ok(if wanted.expected.is_some() {
            Fetched::Verified(length)
        } else {
            Fetched::Unverified(length)
        });
    }
    let _ = tokio::fs::remove_file(&temp).await;
    Err(fail(last, "aborted"))
}

/// Creates the directories from `root` (canonical) down to `dir`, one
/// level at a time, refusing to go through a symbolic link: a link planted
/// in DIR must not lead outside it.
fn make_dirs_inside(root: &Path, dir: &Path) -> Result<(), (String, &'static str)> {
    let rest = dir.strip_prefix(root).map_err(|_| {
        (
            format!("{} is outside the directory", dir.display()),
            "unsafe_path",
        )
    })?;
    let mut at = root.to_path_buf();
    for part in rest.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err((
                    format!(
                        "refused: {} is a symbolic link, which could lead outside the directory",
                        at.display()
                    ),
                    "unsafe_path",
                ));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err((
                    format!(
                        "cannot create the directory {}: a file is there",
                        at.display()
                    ),
                    "io",
                ));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&at) {
                    Ok(()) => {}
                    // Another file of the same directory made it meanwhile.
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(err) => {
                        return Err((format!("cannot create {}: {err}", at.display()), "io"));
                    }
                }
            }
            Err(err) => return Err((format!("cannot read {}: {err}", at.display()), "io")),
        }
    }
    Ok(())
}

/// `ringkv download`.
pub async fn download(args: DownloadArgs, client: Client, out: Output) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let prefix = normalize_prefix(&args.prefix);
    let under = list_prefix(&prefix);
    let (listed, warnings) = list_cluster(&client, &under).await?;
    for warning in &warnings {
        if !out.json {
            eprintln!("warning: {warning}");
        }
    }
    // Every manifest under the prefix (and the prefix's own, even when not
    // listed): key → the newest entry any of them records.
    let mut manifests: Vec<String> = listed.keys().filter(|k| is_manifest(k)).cloned().collect();
    let own = key_for(&prefix, MANIFEST_NAME);
    if !manifests.contains(&own) {
        manifests.push(own);
    }
    let mut expected: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    let mut found_manifest = false;
    let mut problems = Vec::new();
    for manifest_key in &manifests {
        let base = manifest_key
            .strip_suffix(MANIFEST_NAME)
            .unwrap_or_default()
            .trim_end_matches('/');
        match fetch_manifest(&client, manifest_key).await? {
            Ok(Some(manifest)) => {
                found_manifest = true;
                for (rel, entry) in manifest.files {
                    let key = key_for(base, &rel);
                    let newer = expected
                        .get(&key)
                        .is_none_or(|e| e.timestamp < entry.timestamp);
                    if newer {
                        expected.insert(key, entry);
                    }
                }
            }
            Ok(None) => {}
            Err(why) => problems.push(why),
        }
    }
    for problem in &problems {
        if !out.json {
            eprintln!("warning: {problem}; the files it names are not checked");
        }
    }
    let mut keys: BTreeMap<String, u64> = listed
        .iter()
        .filter(|(k, _)| !is_manifest(k))
        .map(|(k, (_, size))| (k.clone(), *size))
        .collect();
    for (key, entry) in &expected {
        keys.entry(key.clone()).or_insert(entry.size);
    }
    if keys.is_empty() && !found_manifest {
        return Err(Error::not_found(format!(
            "no keys under the prefix {prefix:?} (`ringkv keys --prefix {under}` lists a node's keys)"
        ))
        .into());
    }
    tokio::fs::create_dir_all(&args.dir)
        .await
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let root = tokio::fs::canonicalize(&args.dir)
        .await
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let mut failures = Vec::new();
    let mut wanted = Vec::new();
    for (key, size) in keys {
        let rel = key.strip_prefix(&under).unwrap_or(&key).to_string();
        let expected = expected.get(&key).cloned();
        wanted.push(Wanted {
            size: expected.as_ref().map_or(size, |e| e.size),
            key,
            rel,
            expected,
        });
    }
    let total: u64 = wanted.iter().map(|w| w.size).sum();
    let bar = progress_bar(total, out);
    let count = wanted.len();
    bar.set_message(format!("0/{count} files"));
    let mut results = futures::stream::iter(wanted.iter())
        .map(|w| {
            let (client, root, bar, r) = (&client, &root, &bar, args.r.as_deref());
            async move { (w, download_one(client, root, w, r, bar).await) }
        })
        .buffer_unordered(args.parallel);
    let (mut done, mut bytes, mut verified) = (0, 0, 0);
    let mut unverified = Vec::new();
    while let Some((w, result)) = results.next().await {
        done += 1;
        bar.set_message(format!("{done}/{count} files"));
        match result {
            Ok(Fetched::Verified(length)) => {
                verified += 1;
                bytes += length;
            }
            Ok(Fetched::Unverified(length)) => {
                bytes += length;
                unverified.push(w.rel.clone());
            }
            Ok(Fetched::Gone) => {}
            Err(failure) => failed(&bar, out, failure, &mut failures),
        }
    }
    drop(results);
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let files = verified + unverified.len();
    if out.json {
        print_json(&json!({
            "ok": failures.is_empty(),
            "dir": args.dir,
            "prefix": prefix,
            "files": files,
            "verified": verified,
            "unverified": unverified,
            "bytes": bytes,
            "seconds": seconds,
            "mb_per_s": rate(bytes, seconds),
            "failed": failures,
            "warnings": warnings.iter().chain(&problems).collect::<Vec<_>>(),
        }))?;
    } else {
        if !unverified.is_empty() {
            eprintln!(
                "warning: {} files no manifest names were written unchecked (not stored by \
                 `ringkv upload`?): {}",
                unverified.len(),
                unverified.join(", ")
            );
        }
        let verb = if failures.is_empty() {
            "DOWNLOAD OK"
        } else {
            "DOWNLOAD FAILED"
        };
        let failed_part = if failures.is_empty() {
            String::new()
        } else {
            format!(", {} failed", failures.len())
        };
        println!(
            "{verb}: {files} files ({verified} checked){failed_part}, {bytes} bytes in {seconds:.2} s ({:.2} MB/s), into {}",
            rate(bytes, seconds),
            args.dir.display()
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(key_for("", "a/b c"), "a/b c");
        assert_eq!(key_for(&normalize_prefix("photos/"), "a"), "photos/a");
        assert_eq!(list_prefix(""), "");
        assert_eq!(list_prefix("p"), "p/");
        assert!(is_manifest(".ringkv-manifest"));
        assert!(is_manifest("p/q/.ringkv-manifest"));
        assert!(!is_manifest("p/x.ringkv-manifest"));
    }

    #[test]
    fn paths_that_would_leave_the_directory_are_refused() {
        let root = Path::new("/data/out");
        assert_eq!(
            local_path(root, "a/b c.txt").unwrap(),
            Path::new("/data/out/a/b c.txt")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(local_path(root, bad).is_err(), "{bad:?}");
        }
        // A name that merely starts with dots is a name.
        assert!(local_path(root, "..hidden").is_ok());
    }

    #[test]
    fn a_walk_finds_nested_files_and_skips_links_to_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/x y.txt"), "1").unwrap();
        std::fs::write(dir.path().join("top"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("loop")).unwrap();
        let (files, skipped) = walk(dir.path()).unwrap();
        let rels: Vec<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, vec!["a/b/x y.txt", "top"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, "loop");
    }
}
