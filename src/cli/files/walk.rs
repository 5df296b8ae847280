//! The local side: the files under DIR, and paths that stay inside it
//! (no key may write outside DIR, through `..` or a planted link).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Failure;

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

/// A file found under DIR.
#[derive(Debug)]
pub(super) struct LocalFile {
    /// Path relative to DIR, `/`-separated.
    pub(super) rel: String,
    /// Where it is.
    pub(super) path: PathBuf,
    /// Its length when listed.
    pub(super) size: u64,
}

/// Every regular file under `root` (following links to files, not to
/// directories, which could loop), sorted; plus the entries skipped and
/// why.
pub(super) fn walk(root: &Path) -> anyhow::Result<(Vec<LocalFile>, Vec<Failure>)> {
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
/// level at a time, refusing to go through a symbolic link: a link planted
/// in DIR must not lead outside it.
pub(super) fn make_dirs_inside(root: &Path, dir: &Path) -> Result<(), (String, &'static str)> {
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
