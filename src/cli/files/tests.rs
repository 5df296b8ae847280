//! Path safety, key names and manifests of `upload` and `download`.
use std::path::Path;

use super::walk::{local_path, walk};
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
