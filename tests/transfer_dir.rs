//! `ringkv upload DIR` and `ringkv download DIR` against a real cluster
//! whose nodes each hold only some keys (N = 2 of 3): a tree with nested
//! directories, spaces, an empty file and a 3 MB file goes up through one
//! node and comes back through another byte for byte; a key changed after
//! the upload is reported as a checksum mismatch and not written; a key
//! whose path would leave the directory is refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Cluster, Options, ringkv_cli as ringkv};
use serde_json::Value;

/// Every file under `root`: relative path → bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_goes_up_and_comes_back_checked() {
    let cluster = Cluster::start(Options {
        nodes: 3,
        replicas: 2,
        ..Options::default()
    })
    .await;
    let (first, last) = (&cluster.nodes[0].id, &cluster.nodes[2].id);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write(&source, "top.txt", b"at the top");
    write(&source, "a/b/c/deep.txt", b"three levels down");
    write(&source, "with space/file name.txt", b"spaces in both");
    write(&source, "empty", b"");
    write(&source, "big/three.bin", &common::bytes(7, 3_000_000));
    for i in 0..20 {
        write(
            &source,
            &format!("many/{i}.txt"),
            format!("file {i}").as_bytes(),
        );
    }
    let expected = tree(&source);

    let (ok, out, err) = ringkv(
        first,
        &[
            "upload",
            source.to_str().unwrap(),
            "--prefix",
            "backup/2026",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("UPLOAD OK: 25 files, "), "{out}");
    assert!(out.contains("MB/s"), "{out}");

    // Through another node, into a fresh directory: every file, no more.
    let copy = work.path().join("copy");
    let (ok, out, err) = ringkv(
        last,
        &[
            "download",
            copy.to_str().unwrap(),
            "--prefix",
            "backup/2026/",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("DOWNLOAD OK: 25 files (25 checked)"),
        "{out}"
    );
    assert_eq!(tree(&copy), expected);

    // --json, both ways.
    let (ok, out, err) = ringkv(
        last,
        &[
            "--json",
            "upload",
            source.to_str().unwrap(),
            "--prefix",
            "json",
            "--parallel",
            "3",
        ],
    );
    assert!(ok, "{err}");
    let up: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(up["ok"], true, "{up}");
    assert_eq!(up["files"], 25);
    assert_eq!(up["bytes"], expected.values().map(Vec::len).sum::<usize>());
    assert_eq!(up["manifest"], "json/.ringkv-manifest");
    let json_copy = work.path().join("json-copy");
    let (ok, out, err) = ringkv(
        first,
        &[
            "--json",
            "download",
            json_copy.to_str().unwrap(),
            "--prefix",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let down: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (down["files"].as_u64(), down["verified"].as_u64()),
        (Some(25), Some(25)),
        "{down}"
    );
    assert_eq!(down["failed"].as_array().map(Vec::len), Some(0));
    assert_eq!(tree(&json_copy), expected);

    // A key changed after the upload: a checksum mismatch, reported and not
    // written; the other files still are; exit code non-zero.
    let (ok, _, err) = ringkv(first, &["put", "backup/2026/a/b/c/deep.txt", "changed"]);
    assert!(ok, "{err}");
    let changed = work.path().join("changed");
    let (ok, out, err) = ringkv(
        last,
        &[
            "download",
            changed.to_str().unwrap(),
            "--prefix",
            "backup/2026",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.starts_with("DOWNLOAD FAILED: 24 files"), "{out}");
    assert!(
        err.contains("FAILED a/b/c/deep.txt: checksum mismatch"),
        "{err}"
    );
    let mut without = expected.clone();
    without.remove("a/b/c/deep.txt");
    assert_eq!(tree(&changed), without, "no partial or temporary file left");
    let (ok, out, _) = ringkv(
        last,
        &[
            "--json",
            "download",
            work.path().join("changed-json").to_str().unwrap(),
            "--prefix",
            "backup/2026",
        ],
    );
    assert!(!ok);
    let down: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(down["ok"], false);
    assert_eq!(down["failed"][0]["code"], "checksum_mismatch", "{down}");
    assert_eq!(down["failed"][0]["path"], "a/b/c/deep.txt");

    // Keys whose path would leave the directory are refused by name;
    // nothing lands outside it.
    for key in ["backup/2026/../escaped", "backup/2026//abs"] {
        let (ok, _, err) = ringkv(first, &["put", key, "x"]);
        assert!(ok, "{err}");
    }
    let guarded = work.path().join("guarded");
    let (ok, _, err) = ringkv(
        first,
        &[
            "download",
            guarded.to_str().unwrap(),
            "--prefix",
            "backup/2026",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("FAILED ../escaped: refused: the path has a `..` component"),
        "{err}"
    );
    assert!(
        err.contains("FAILED /abs: refused: the path is absolute"),
        "{err}"
    );
    assert!(!work.path().join("escaped").exists());
    assert!(!Path::new("/abs").exists());

    // Nothing under a prefix: a clear error.
    let (ok, _, err) = ringkv(
        first,
        &[
            "download",
            work.path().join("none").to_str().unwrap(),
            "--prefix",
            "nothing-here",
        ],
    );
    assert!(!ok);
    assert!(err.contains("no keys under the prefix"), "{err}");
}
