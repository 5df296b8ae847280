//! A node's identity, the `host:port` peers reach it at. Below the error
//! type (which names nodes in its variants), so it has its own parse error,
//! [`InvalidNodeId`], which becomes `Error::InvalidInput`.

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// A node's identity: the `host:port` peers use to reach it (F1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Parses and checks a `host:port` identity.
    pub fn parse(s: &str) -> Result<NodeId, InvalidNodeId> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| InvalidNodeId(format!("node {s:?} is not host:port")))?;
        if host.is_empty() {
            return Err(InvalidNodeId(format!("node {s:?} has an empty host")));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| InvalidNodeId(format!("node {s:?} has an invalid port")))?;
        if port == 0 {
            return Err(InvalidNodeId(format!("node {s:?} has port 0")));
        }
        Ok(NodeId(s.to_string()))
    }

    /// The identity as `host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The port part.
    pub fn port(&self) -> u16 {
        self.0
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// A stable 64-bit hash, used as the writer id in versions.
    pub fn hash64(&self) -> u64 {
        xxh3_64(self.0.as_bytes())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a `host:port` is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidNodeId(pub String);
