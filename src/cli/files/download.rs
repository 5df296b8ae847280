//! `ringkv download DIR`: the keys under a prefix, listed on every live
//! member, written to DIR through temporary files kept only when their
//! blake3 matches the manifest's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::manifest::{MANIFEST_NAME, ManifestEntry, fetch_manifest};
use super::walk::{local_path, make_dirs_inside};
use super::{
    DEFAULT_PARALLEL, Failure, code_of, failed, is_manifest, key_for, list_prefix,
    normalize_prefix, progress_bar, rate,
};
use crate::cli::ops::{Output, print_json};
use ringkv::client::Client;
use ringkv::error::Error;

/// Page size of `/keys` when listing a prefix (the server's maximum).
const LIST_PAGE: usize = 1000;

/// Attempts at one file's download when its body breaks off midway (the
/// client already retries requests that find no node).
const DOWNLOAD_ATTEMPTS: usize = 2;

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
        let result: ringkv::error::Result<()> = async {
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
            Err(err) => return Err(fail(crate::cli::explain(&err, "-r"), code_of(&err))),
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
