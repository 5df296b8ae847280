//! The node's `node.json` in its data dir: the identity the data belongs
//! to and the tokens it owns, and whether it finished bootstrapping them,
//! so that a restarted node takes its place again instead of joining anew.
//! Written aside, synced and renamed, so a crash leaves the old file or
//! the new one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ring::{NodeId, Token, decode_tokens, encode_tokens};

/// File in the data dir that pins the node's identity and tokens.
const NODE_FILE: &str = "node.json";

/// What is persisted about the node itself.
#[derive(Debug, Serialize, Deserialize)]
struct NodeFile {
    /// The identity this data belongs to.
    node: String,
    /// The node's tokens, as gossiped.
    tokens: String,
    /// Whether it finished streaming its ranges when it joined (files
    /// written before this existed belong to nodes that had).
    #[serde(default = "finished_by_default")]
    bootstrapped: bool,
}

fn finished_by_default() -> bool {
    true
}

/// What the data dir says about the node's place in the ring.
#[derive(Debug, Default)]
pub struct Identity {
    /// Its tokens, once chosen.
    pub tokens: Option<Vec<Token>>,
    /// Whether it finished bootstrapping them.
    pub bootstrapped: bool,
}

/// The node's tokens kept in its data dir, if it has joined before.
pub fn load(dir: Option<&Path>, id: &NodeId) -> Result<Identity> {
    let Some(dir) = dir else {
        return Ok(Identity::default());
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join(NODE_FILE);
    match std::fs::read(&path) {
        Ok(raw) => {
            let file: NodeFile = serde_json::from_slice(&raw)
                .map_err(|e| Error::corrupt(format!("{}: {e}", path.display())))?;
            if file.node != id.as_str() {
                return Err(Error::invalid(format!(
                    "{} belongs to node {}, not {id}; use another --data-dir",
                    dir.display(),
                    file.node
                )));
            }
            Ok(Identity {
                tokens: Some(decode_tokens(&file.tokens)?),
                bootstrapped: file.bootstrapped,
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Identity::default()),
        Err(err) => Err(err.into()),
    }
}

/// Keeps the node's identity and tokens in its data dir (atomically:
/// written aside, synced, renamed); no tokens removes the file.
pub fn save(
    dir: Option<&Path>,
    id: &NodeId,
    tokens: Option<&[Token]>,
    bootstrapped: bool,
) -> Result<()> {
    let Some(dir) = dir else {
        return Ok(());
    };
    let path = dir.join(NODE_FILE);
    let Some(tokens) = tokens else {
        return match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        };
    };
    let file = NodeFile {
        node: id.to_string(),
        tokens: encode_tokens(tokens),
        bootstrapped,
    };
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Writes the `node.json` of a node that owns `tokens` and has finished
/// bootstrapping, into data dir `dir`: started there, the node takes its
/// place in the ring at once (normal) instead of joining and fetching its
/// ranges. For benches that fill data dirs offline.
pub fn write_bootstrapped(dir: &Path, id: &NodeId, tokens: &[Token]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    save(Some(dir), id, Some(tokens), true)
}
