//! The one error type of the library, named for what the caller does next.
//!
//! Local errors keep their source; only the HTTP and RPC edges turn them into
//! strings. `http_status()` is the single place that maps an error to a status
//! code, and `is_retryable()` tells clients whether another attempt (on this or
//! another node) can succeed.

use crate::node_id::{InvalidNodeId, NodeId};

/// Errors returned by every layer of ringkv.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key (or another named thing) does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The request itself is wrong; repeating it cannot succeed.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong with it.
        reason: String,
    },
    /// A value larger than the configured maximum.
    #[error("value too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge {
        /// Bytes offered (or read so far).
        size: u64,
        /// The configured limit (`--max-value-size`).
        limit: u64,
    },
    /// Fewer replicas answered than the quorum needs.
    #[error("unavailable: needed {needed} replicas, {got} answered")]
    Unavailable {
        /// Replicas the quorum needs (W or R).
        needed: usize,
        /// Replicas that answered successfully, among the set that fell
        /// short (a write during a transition needs W of several).
        got: usize,
        /// The replicas that answered successfully.
        answered: Vec<NodeId>,
        /// The replicas that failed, with the reason.
        failed: Vec<(NodeId, String)>,
    },
    /// A peer or the client took longer than the deadline.
    #[error("timed out: {what}")]
    Timeout {
        /// What was waited for.
        what: String,
    },
    /// The client went away or its upload broke off.
    #[error("request aborted: {reason}")]
    Aborted {
        /// Why the transfer stopped.
        reason: String,
    },
    /// A call to another node failed.
    #[error("rpc to {node} failed: {reason}")]
    Rpc {
        /// The peer called.
        node: NodeId,
        /// What went wrong, as the transport said it.
        reason: String,
    },
    /// The disk is full, or would be short of its reserve; the write was not stored.
    #[error(
        "no space left on the data disk (a write must leave --disk-reserve free): free some space or give the node a larger disk"
    )]
    DiskFull,
    /// Stored bytes do not match their checksum or cannot be decoded.
    #[error("corrupt data: {reason}")]
    Corrupt {
        /// What did not check out.
        reason: String,
    },
    /// The feature is not built yet.
    #[error("not implemented: {what}")]
    NotImplemented {
        /// The missing feature.
        what: String,
    },
    /// A fault of this program rather than of its input or its disk: a
    /// task that panicked or was cancelled, a response that could not be
    /// built. Answers 500.
    #[error("internal error: {what}")]
    Internal {
        /// What failed.
        what: String,
    },
    /// An I/O error on local files.
    #[error("I/O error: {source}")]
    Io {
        /// The error the operating system gave.
        #[from]
        source: std::io::Error,
    },
    /// The storage engine failed.
    #[error("storage engine error: {source}")]
    Storage {
        /// fjall's error.
        #[from]
        source: fjall::Error,
    },
    /// A node could not be reached at all (client side).
    #[error("cannot reach {node}: {reason}")]
    Unreachable {
        /// The node tried.
        node: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// A node answered an HTTP request with an error (client side).
    #[error("{node} answered {status}: {message}")]
    Remote {
        /// The node asked.
        node: String,
        /// Its HTTP status.
        status: u16,
        /// The `error` field of its JSON body, or the body itself.
        message: String,
    },
    /// The request contradicts the cluster's state (removing a member
    /// that is up or already removed, leaving twice); repeating it as is
    /// cannot succeed.
    #[error("conflict: {reason}")]
    Conflict {
        /// What it contradicts, and what to do instead.
        reason: String,
    },
    /// A replica refused a client's read or write planned on a ring that
    /// places the key on other nodes than its own ring does.
    #[error(
        "the ring changed while the request was under way ({node} places the key elsewhere); try again"
    )]
    RingChanged {
        /// The replica that refused.
        node: NodeId,
        /// Why, encoded (`proto::FenceRefusal`: its view of the ring and
        /// what it needs), for the coordinator to plan again.
        refusal: bytes::Bytes,
    },
    /// A port this node must listen on is taken by another program.
    #[error(
        "{protocol} {addr} is in use: another program (or a connection still closing) holds it; \
         give this node another --port, stop what holds it, or keep the kernel from lending it \
         to outgoing connections (ringkv's default ports lie in Linux's ephemeral range \
         32768-60999: sysctl -w net.ipv4.ip_local_reserved_ports=50140-50199)"
    )]
    PortInUse {
        /// `TCP` (API and node RPC) or `UDP` (gossip).
        protocol: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// The node is shutting down or not ready.
    #[error("node not ready: {reason}")]
    NotReady {
        /// Why it cannot serve.
        reason: String,
    },
}

/// Result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }

    /// Shorthand for [`Error::Corrupt`].
    pub fn corrupt(reason: impl Into<String>) -> Self {
        Error::Corrupt {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// The HTTP status code this error answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NotFound { .. } => 404,
            Error::InvalidInput { .. } => 400,
            Error::TooLarge { .. } => 413,
            Error::Unavailable { .. } => 503,
            Error::Timeout { .. } => 504,
            Error::Aborted { .. } => 400,
            Error::Rpc { .. } => 502,
            Error::DiskFull => 507,
            Error::Corrupt { .. } => 500,
            Error::NotImplemented { .. } => 501,
            Error::Io { source } if is_disk_full(source) => 507,
            Error::Io { .. } | Error::Storage { .. } | Error::Internal { .. } => 500,
            Error::NotReady { .. } => 503,
            Error::Conflict { .. } => 409,
            Error::RingChanged { .. } => 503,
            Error::PortInUse { .. } => 500,
            Error::Remote { status, .. } => *status,
            Error::Unreachable { .. } => 503,
        }
    }

    /// A short machine-readable code for JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::InvalidInput { .. } => "invalid_input",
            Error::TooLarge { .. } => "too_large",
            Error::Unavailable { .. } => "unavailable",
            Error::Timeout { .. } => "timeout",
            Error::Aborted { .. } => "aborted",
            Error::Rpc { .. } => "rpc_failed",
            Error::DiskFull => "disk_full",
            Error::Corrupt { .. } => "corrupt",
            Error::NotImplemented { .. } => "not_implemented",
            Error::Io { .. } => "io",
            Error::Storage { .. } => "storage",
            Error::Internal { .. } => "internal",
            Error::NotReady { .. } => "not_ready",
            Error::Conflict { .. } => "conflict",
            Error::RingChanged { .. } => "ring_changed",
            Error::PortInUse { .. } => "port_in_use",
            Error::Remote { .. } => "remote",
            Error::Unreachable { .. } => "unreachable",
        }
    }

    /// Whether the same request may succeed if tried again (here or elsewhere).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Timeout { .. }
                | Error::Rpc { .. }
                | Error::NotReady { .. }
                | Error::Unreachable { .. }
                | Error::RingChanged { .. }
        ) || matches!(self, Error::Remote { status, .. } if *status == 503 || *status == 502 || *status == 504)
    }

    /// Maps a storage-engine error, recognising a full disk and bytes that
    /// fail the engine's own checks (block and blob checksums, malformed
    /// headers): those are [`Error::Corrupt`], so that the copy is dropped
    /// and repaired from another replica like one failing our checksums.
    pub fn from_storage(err: fjall::Error) -> Self {
        use fjall::LsmError;
        match &err {
            fjall::Error::Io(io) | fjall::Error::Storage(LsmError::Io(io)) if is_disk_full(io) => {
                Error::DiskFull
            }
            fjall::Error::Storage(
                LsmError::ChecksumMismatch { .. }
                | LsmError::Decompress(_)
                | LsmError::InvalidTag(_)
                | LsmError::InvalidTrailer
                | LsmError::InvalidHeader(_)
                | LsmError::Utf8(_),
            )
            | fjall::Error::Decompress(_)
            | fjall::Error::InvalidTag(_)
            | fjall::Error::InvalidTrailer => Error::corrupt(format!("storage engine: {err}")),
            _ => Error::Storage { source: err },
        }
    }
}

/// ENOSPC (28) or EDQUOT (122) on Linux.
fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(28) | Some(122))
        || err.kind() == std::io::ErrorKind::StorageFull
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::NotFound { .. } => tonic::Status::not_found(message),
            Error::InvalidInput { .. } | Error::TooLarge { .. } => {
                tonic::Status::invalid_argument(message)
            }
            Error::Timeout { .. } => tonic::Status::deadline_exceeded(message),
            Error::Aborted { .. } => tonic::Status::aborted(message),
            Error::Conflict { .. } => tonic::Status::failed_precondition(message),
            Error::DiskFull => tonic::Status::resource_exhausted(message),
            Error::Corrupt { .. } => tonic::Status::data_loss(message),
            Error::NotReady { .. } | Error::Unavailable { .. } => {
                tonic::Status::unavailable(message)
            }
            _ => tonic::Status::internal(message),
        }
    }
}

impl From<InvalidNodeId> for Error {
    fn from(err: InvalidNodeId) -> Error {
        Error::invalid(err.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_checksum_failures_are_corrupt_and_travel_as_data_loss() {
        // (A `ChecksumMismatch` needs lsm-tree's own types to build; a bad
        // blob header takes the same path.)
        let bad_blob = fjall::Error::Storage(fjall::LsmError::InvalidHeader("Blob"));
        let err = Error::from_storage(bad_blob);
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::DataLoss);
        let full = fjall::Error::Io(std::io::Error::from_raw_os_error(28));
        assert!(matches!(Error::from_storage(full), Error::DiskFull));
        let other = fjall::Error::Locked;
        assert!(matches!(Error::from_storage(other), Error::Storage { .. }));
    }
}
