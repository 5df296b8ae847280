//! `ringkv upload DIR`: every file under DIR to a key under the prefix,
//! several at once, each read back and checked, then the manifest merged.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde_json::json;

use super::manifest::{MANIFEST_FORMAT, MANIFEST_NAME, Manifest, ManifestEntry, fetch_manifest};
use super::walk::{LocalFile, walk};
use super::{
    DEFAULT_PARALLEL, Failure, code_of, failed, is_manifest, key_for, normalize_prefix,
    progress_bar, rate,
};
use crate::cli::ops::{Output, print_json};
use ringkv::client::{Client, Upload, UploadWatch};
use ringkv::error::Error;

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
) -> ringkv::error::Result<Option<(String, u64, u64)>> {
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
        Err(err) => return Err(fail(crate::cli::explain(&err, "-w"), code_of(&err))),
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
                crate::cli::explain(&err, "-r")
            ),
            code_of(&err),
        )),
    }
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
        .partition(|f| ringkv::key::validate(&key_for(&prefix, &f.rel)).is_ok());
    failures.extend(bad_keys.into_iter().map(|f| {
        Failure {
            error: ringkv::key::validate(&key_for(&prefix, &f.rel))
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
                crate::cli::explain(err, "-w")
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
            eprintln!("FAILED {manifest_key}: {}", crate::cli::explain(err, "-w"));
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
