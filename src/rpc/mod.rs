//! Node-to-node calls: the `Replica` gRPC service (`service.rs`), its
//! replica-side logic (`local.rs`), and [`Peers`], the pool of persistent
//! connections to other nodes.
//!
//! [`ReplicaHandle`] is what the coordinator talks to: the same operations
//! whether the replica is this node (direct calls, no loopback RPC) or a
//! peer (one multiplexed HTTP/2 connection per peer, reused by every call and
//! re-established by tonic when it breaks). Every failed call to a peer
//! (unary or a stream's item) becomes an [`Error`] in `Peers::failed`,
//! which counts it in the node's metrics by peer, call and kind.
//!
//! In test builds, [`ReplicaHandle`] has a third variant, `Fake`: a replica
//! in memory with faults (`fake.rs`), for unit tests of the coordinator.
//!
//! Guarantees: a unary call either returns the replica's reply or an error
//! within its timeout; an error does not tell whether the replica applied
//! the write (it may have). Streams carry no overall timeout: the caller
//! bounds each step.

pub mod batch;
pub mod deadline;
#[cfg(test)]
pub mod fake;
pub mod local;
pub mod noise;
pub mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::proto::replica_client::ReplicaClient;
use crate::proto::{
    BalanceReply, BalanceRequest, Fence, PingRequest, PurgeReply, PurgeRequest, ReadReply,
    ReadRequest, ReadStreamRequest, RecordMeta, ScanItem, ScanRequest, SyncReply, SyncRequest,
    TreeRequest, WriteChunk, WriteReply, WriteRequest, WriteTrailer, write_chunk,
};
use crate::ring::{NodeId, TokenRange};
use crate::version::Version;

pub use self::local::LocalReplica;
pub use self::service::ReplicaService;

/// What `Sync`, `Balance` and `Purge` calls run (implemented by the
/// lifecycle).
pub trait SyncHandler: Send + Sync + 'static {
    /// Fetches what this node gains in the ring with `digest`.
    fn sync(&self, digest: u64) -> futures::future::BoxFuture<'static, Result<SyncReply>>;
    /// Anti-entropy of this node's ranges.
    fn balance(&self) -> futures::future::BoxFuture<'static, Result<BalanceReply>>;
    /// Purge of the keys this node no longer owns, once the ring has
    /// settled (waiting up to `wait` for it).
    fn purge(&self, wait: Duration) -> futures::future::BoxFuture<'static, Result<PurgeReply>>;
}

/// One message of a streamed write after its header.
#[derive(Debug, Clone)]
pub enum WriteMsg {
    /// Value bytes, in order.
    Data(Bytes),
    /// End of the value: what the replica must have received.
    Trailer {
        /// Total bytes.
        size: u64,
        /// blake3 of the value.
        checksum: Bytes,
    },
}

/// Largest gRPC message accepted: a 1 MiB chunk plus framing, with room.
pub const MAX_RPC_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// HTTP/2 flow-control window per stream: 1 MiB in flight keeps loopback
/// and LAN streams at full speed while bounding buffered bytes per stream.
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 window per connection (all streams to one peer together).
pub const CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// How calls to peers behave.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// Deadline of unary calls (reads, small writes).
    pub timeout: Duration,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// The cluster secret: connections to peers open a Noise session
    /// with it (`noise.rs`); `None`: plain h2c (loopback only).
    pub secrets: Option<Arc<crate::secret::Secrets>>,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            secrets: None,
        }
    }
}

/// Persistent connections to peers, one per peer, created on first use.
#[derive(Clone)]
pub struct Peers {
    /// Channels by peer; a std mutex held only to look up or insert.
    channels: Arc<Mutex<HashMap<NodeId, Channel>>>,
    /// Queues of small calls by peer (`batch.rs`); a std mutex held only
    /// to look up or insert.
    queues: Arc<Mutex<HashMap<NodeId, batch::CallQueue>>>,
    /// Timeouts.
    options: RpcOptions,
    /// Counts the calls that fail (`ringkv_replica_rpc_errors_total`).
    metrics: Metrics,
}

impl Peers {
    /// An empty pool.
    pub fn new(options: RpcOptions, metrics: Metrics) -> Peers {
        Peers {
            channels: Arc::default(),
            queues: Arc::default(),
            options,
            metrics,
        }
    }

    /// The error of a failed call `rpc` to `node`, counted: every failure
    /// of a call to a peer comes through here.
    fn failed(&self, node: &NodeId, rpc: &'static str, status: tonic::Status) -> Error {
        counted_failure(&self.metrics, node, rpc, status)
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The queue of small calls to `node`, started on first use.
    fn queue(&self, node: &NodeId) -> Result<batch::CallQueue> {
        if let Some(queue) = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
        {
            return Ok(queue.clone());
        }
        let client = self.client(node)?;
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues
            .entry(node.clone())
            .or_insert_with(|| batch::CallQueue::start(node.clone(), client, self.metrics.clone()));
        Ok(queue.clone())
    }

    /// A client for `node`, reusing its connection.
    pub fn client(&self, node: &NodeId) -> Result<ReplicaClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(node) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{node}"))
                    .map_err(|e| Error::invalid(format!("bad peer address {node}: {e}")))?
                    .connect_timeout(self.options.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true)
                    .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
                    .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES));
                let channel = match &self.options.secrets {
                    Some(secrets) => endpoint.connect_with_connector_lazy(noise::Connector {
                        secrets: secrets.clone(),
                    }),
                    None => endpoint.connect_lazy(),
                };
                channels.insert(node.clone(), channel.clone());
                channel
            }
        };
        Ok(ReplicaClient::new(channel)
            .max_decoding_message_size(MAX_RPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RPC_MESSAGE_BYTES))
    }
}

/// A replica the coordinator can call: this node or a peer.
#[derive(Clone)]
pub enum ReplicaHandle {
    /// This node's own store.
    Local(LocalReplica),
    /// Another node, through the pool.
    Remote {
        /// The peer.
        node: NodeId,
        /// The pool holding its connection.
        peers: Peers,
    },
    /// A replica in memory with faults, for unit tests of the coordinator
    /// (`fake.rs`). Test builds only: production matches two variants.
    #[cfg(test)]
    Fake(Arc<fake::FakeReplica>),
}

/// The error of a failed call `rpc` to `node`, counted in
/// `ringkv_replica_rpc_errors_total` (plain calls and batched ones alike).
fn counted_failure(
    metrics: &Metrics,
    node: &NodeId,
    rpc: &'static str,
    status: tonic::Status,
) -> Error {
    let err = rpc_error(node, status);
    metrics.rpc_failed(node, rpc, &err);
    err
}

fn rpc_error(node: &NodeId, status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::NotFound => Error::not_found(status.message().to_string()),
        tonic::Code::InvalidArgument => Error::invalid(status.message().to_string()),
        tonic::Code::ResourceExhausted => Error::DiskFull,
        tonic::Code::DeadlineExceeded => Error::Timeout {
            what: format!("rpc to {node}"),
        },
        tonic::Code::DataLoss => Error::corrupt(format!("{node}: {}", status.message())),
        tonic::Code::FailedPrecondition if !status.details().is_empty() => Error::RingChanged {
            node: node.clone(),
            refusal: bytes::Bytes::copy_from_slice(status.details()),
        },
        tonic::Code::FailedPrecondition => Error::Conflict {
            reason: format!("{node}: {}", status.message()),
        },
        _ => Error::Rpc {
            node: node.clone(),
            reason: status.message().to_string(),
        },
    }
}

impl ReplicaHandle {
    fn with_timeout<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let ReplicaHandle::Remote { peers, .. } = self {
            request.set_timeout(peers.timeout());
        }
        request
    }

    /// Stores a whole value or a tombstone.
    pub async fn write(&self, meta: RecordMeta, value: Bytes) -> Result<WriteReply> {
        self.write_fenced(meta, value, None).await
    }

    /// Stores a whole value or a tombstone of a client's write planned as
    /// `fence` says (a peer whose ring places the key elsewhere refuses it
    /// with [`Error::RingChanged`]; this node shares the caller's ring).
    pub async fn write_fenced(
        &self,
        meta: RecordMeta,
        value: Bytes,
        fence: Option<Fence>,
    ) -> Result<WriteReply> {
        match self {
            ReplicaHandle::Local(local) => local.write(meta, value).await,
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => fake.write(meta, value, fence).await,
            ReplicaHandle::Remote { node, peers } => {
                let request = WriteRequest {
                    meta: Some(meta),
                    value,
                    fence,
                };
                peers.queue(node)?.write(request, peers.timeout()).await
            }
        }
    }

    /// Streams a value: `header`, then the messages of `rx` (ending with a
    /// trailer). Dropping the sender before the trailer aborts the write.
    /// `fence`: as for [`ReplicaHandle::write_fenced`].
    pub async fn write_stream(
        &self,
        header: RecordMeta,
        fence: Option<Fence>,
        rx: mpsc::Receiver<WriteMsg>,
    ) -> Result<WriteReply> {
        let messages = tokio_stream::wrappers::ReceiverStream::new(rx);
        match self {
            ReplicaHandle::Local(local) => local.write_stream(header, messages.map(Ok)).await,
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => fake.write_stream(header, fence, messages).await,
            ReplicaHandle::Remote { node, peers } => {
                let first = WriteChunk {
                    part: Some(write_chunk::Part::Header(header)),
                    fence,
                };
                let rest = messages.map(|msg| WriteChunk {
                    part: Some(match msg {
                        WriteMsg::Data(data) => write_chunk::Part::Data(data),
                        WriteMsg::Trailer { size, checksum } => {
                            write_chunk::Part::Trailer(WriteTrailer { size, checksum })
                        }
                    }),
                    fence: None,
                });
                let outbound = futures::stream::once(async { first }).chain(rest);
                let reply = peers.client(node)?.write_stream(outbound).await;
                reply
                    .map(|r| r.into_inner())
                    .map_err(|s| peers.failed(node, "write_stream", s))
            }
        }
    }

    /// What the replica holds for `key` (value included up to `inline_max` bytes).
    pub async fn read(&self, key: &str, inline_max: u64) -> Result<ReadReply> {
        self.read_fenced(key, inline_max, None).await
    }

    /// What the replica holds for `key`, for a client's read planned as
    /// `fence` says (see [`ReplicaHandle::write_fenced`]).
    pub async fn read_fenced(
        &self,
        key: &str,
        inline_max: u64,
        fence: Option<Fence>,
    ) -> Result<ReadReply> {
        match self {
            ReplicaHandle::Local(local) => local.read(key, inline_max).await,
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => fake.read(key, inline_max, fence).await,
            ReplicaHandle::Remote { node, peers } => {
                let request = ReadRequest {
                    key: key.to_string(),
                    inline_max,
                    fence,
                };
                peers.queue(node)?.read(request, peers.timeout()).await
            }
        }
    }

    /// The bytes of `key` at exactly `version`, from `offset`, `length` bytes
    /// (0 = to the end).
    pub async fn read_stream(
        &self,
        key: &str,
        version: Version,
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        match self {
            ReplicaHandle::Local(local) => {
                let rx = local.read_stream(key.to_string(), version, offset, length)?;
                Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
            }
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => fake.read_stream(key, version, offset, length).await,
            ReplicaHandle::Remote { node, peers } => {
                let request = ReadStreamRequest {
                    key: key.to_string(),
                    version: Some(version.into()),
                    offset,
                    length,
                };
                let response = peers
                    .client(node)?
                    // No call deadline: a large value streams for long; the
                    // caller bounds the wait for each chunk instead.
                    .read_stream(tonic::Request::new(request))
                    .await
                    .map_err(|s| peers.failed(node, "read_stream", s))?;
                let (node, peers) = (node.clone(), peers.clone());
                Ok(response
                    .into_inner()
                    .map(move |item| {
                        item.map(|c| c.data)
                            .map_err(|s| peers.failed(&node, "read_stream", s))
                    })
                    .boxed())
            }
        }
    }

    /// Every record the replica holds in `ranges` (values up to
    /// `inline_max` bytes included).
    pub async fn scan(
        &self,
        ranges: &[TokenRange],
        inline_max: u64,
    ) -> Result<BoxStream<'static, Result<ScanItem>>> {
        self.scan_limited(ranges, inline_max, 0).await
    }

    /// The first `limit` records (0: all) the replica holds in `ranges`, in
    /// ring order from the first range.
    pub async fn scan_limited(
        &self,
        ranges: &[TokenRange],
        inline_max: u64,
        limit: u64,
    ) -> Result<BoxStream<'static, Result<ScanItem>>> {
        match self {
            ReplicaHandle::Local(local) => {
                let rx = local.scan(ranges.to_vec(), inline_max, limit)?;
                Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
            }
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => Err(fake.unserved("scan")),
            ReplicaHandle::Remote { node, peers } => {
                let request = ScanRequest {
                    ranges: ranges
                        .iter()
                        .map(|r| crate::proto::TokenRange {
                            start: r.start.0,
                            end: r.end.0,
                        })
                        .collect(),
                    inline_max,
                    limit,
                };
                let response = peers
                    .client(node)?
                    .scan(tonic::Request::new(request))
                    .await
                    .map_err(|s| peers.failed(node, "scan", s))?;
                let (node, peers) = (node.clone(), peers.clone());
                Ok(response
                    .into_inner()
                    .map(move |item| item.map_err(|s| peers.failed(&node, "scan", s)))
                    .boxed())
            }
        }
    }

    /// Asks the node to fetch what it gains in the ring with `digest`;
    /// answers when it has (no deadline: that may take long).
    pub async fn sync(&self, digest: u64, local: &dyn SyncHandler) -> Result<SyncReply> {
        match self {
            ReplicaHandle::Local(_) => local.sync(digest).await,
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => Err(fake.unserved("sync")),
            ReplicaHandle::Remote { node, peers } => peers
                .client(node)?
                .sync(tonic::Request::new(SyncRequest { digest }))
                .await
                .map(|r| r.into_inner())
                .map_err(|s| peers.failed(node, "sync", s)),
        }
    }

    /// Hashes of hash-tree nodes of `range` at `level` (see `merkle.rs`).
    pub async fn tree(&self, range: TokenRange, level: u32, nodes: &[usize]) -> Result<Vec<u64>> {
        match self {
            ReplicaHandle::Local(local) => local.tree(range, level, nodes),
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => Err(fake.unserved("tree")),
            ReplicaHandle::Remote { node, peers } => {
                let request = self.with_timeout(TreeRequest {
                    range: Some(crate::proto::TokenRange {
                        start: range.start.0,
                        end: range.end.0,
                    }),
                    level,
                    nodes: nodes.iter().map(|n| *n as u64).collect(),
                });
                let reply = peers.client(node)?.tree(request).await;
                let hashes = reply
                    .map_err(|s| peers.failed(node, "tree", s))?
                    .into_inner()
                    .hashes;
                if hashes.len() != nodes.len() {
                    return Err(Error::Rpc {
                        node: node.clone(),
                        reason: format!("{} tree hashes for {} nodes", hashes.len(), nodes.len()),
                    });
                }
                Ok(hashes)
            }
        }
    }

    /// The node's own id, as it answers a `Ping` (within the call timeout).
    pub async fn ping(&self) -> Result<NodeId> {
        match self {
            ReplicaHandle::Local(_) => Err(Error::invalid("a node does not ping itself")),
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => Err(fake.unserved("ping")),
            ReplicaHandle::Remote { node, peers } => {
                let request = self.with_timeout(PingRequest {});
                let reply = peers
                    .client(node)?
                    .ping(request)
                    .await
                    .map_err(|s| peers.failed(node, "ping", s))?;
                NodeId::parse(&reply.into_inner().node).map_err(Error::from)
            }
        }
    }

    /// Asks the node to purge what it no longer owns (waiting up to `wait`
    /// for its ring to settle); answers when done.
    pub async fn purge(&self, local: &dyn SyncHandler, wait: Duration) -> Result<PurgeReply> {
        match self {
            ReplicaHandle::Local(_) => local.purge(wait).await,
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => Err(fake.unserved("purge")),
            ReplicaHandle::Remote { node, peers } => peers
                .client(node)?
                .purge(tonic::Request::new(PurgeRequest {
                    wait_ms: wait.as_millis() as u64,
                }))
                .await
                .map(|r| r.into_inner())
                .map_err(|s| peers.failed(node, "purge", s)),
        }
    }

    /// Asks the node to run anti-entropy on its ranges; answers when done.
    pub async fn balance(&self, local: &dyn SyncHandler) -> Result<BalanceReply> {
        match self {
            ReplicaHandle::Local(_) => local.balance().await,
            #[cfg(test)]
            ReplicaHandle::Fake(fake) => Err(fake.unserved("balance")),
            ReplicaHandle::Remote { node, peers } => peers
                .client(node)?
                .balance(tonic::Request::new(BalanceRequest {}))
                .await
                .map(|r| r.into_inner())
                .map_err(|s| peers.failed(node, "balance", s)),
        }
    }
}
