//! The gRPC `Replica` service: decodes requests, checks them, and calls
//! [`LocalReplica`]. Every malformed message is an error reply on that call.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::coordinator::StallWatch;
use crate::metrics::{Metrics, Refusal};
use crate::proto::replica_server::Replica;
use crate::proto::{
    BalanceReply, BalanceRequest, PingReply, PingRequest, ReadReply, ReadRequest,
    ReadStreamRequest, ScanItem, ScanRequest, SyncReply, SyncRequest, TreeReply, TreeRequest,
    ValueChunk, WriteChunk, WriteReply, WriteRequest, write_chunk,
};
use crate::ring::{NodeId, Token, TokenRange};
use crate::rpc::deadline::Deadline;
use crate::rpc::local::{LocalReplica, MAX_SCAN_RANGES, MAX_TREE_NODES};
use crate::rpc::{SyncHandler, WriteMsg};

/// Serves the `Replica` service of one node.
pub struct ReplicaService {
    /// Replica logic on the local store.
    pub local: LocalReplica,
    /// This node, for `Ping`.
    pub node: NodeId,
    /// Runs `Sync` calls.
    pub sync: std::sync::Arc<dyn SyncHandler>,
    /// Notices when this process was stopped: writes read right after are
    /// of unknown age and refused.
    pub stall: std::sync::Arc<StallWatch>,
    /// Counts the writes refused.
    pub metrics: Metrics,
}

impl ReplicaService {
    /// Refuses a write its coordinator may have given up on: read right
    /// after this process was stopped (it may have waited in the socket
    /// for any time), or past the deadline its caller set.
    fn admit_write(&self, deadline: Option<&Deadline>) -> Result<(), Status> {
        if let Err(err) = self.stall.check() {
            self.metrics.write_refused(Refusal::Stalled);
            return Err(err.into());
        }
        if deadline.is_some_and(Deadline::passed) {
            self.metrics.write_refused(Refusal::Deadline);
            return Err(Status::deadline_exceeded(
                "the coordinator's deadline passed before this replica applied the write; not applied",
            ));
        }
        Ok(())
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ValueChunk, Status>> + Send>>;
type ScanStream = Pin<Box<dyn Stream<Item = Result<ScanItem, Status>> + Send>>;

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        self.admit_write(request.extensions().get::<Deadline>())?;
        let WriteRequest { meta, value } = request.into_inner();
        let meta = meta.ok_or_else(|| Status::invalid_argument("write without meta"))?;
        Ok(Response::new(self.local.write(meta, value).await?))
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<WriteChunk>>,
    ) -> Result<Response<WriteReply>, Status> {
        self.admit_write(request.extensions().get::<Deadline>())?;
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(WriteChunk {
                part: Some(write_chunk::Part::Header(header)),
            })) => header,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "a write stream must start with a header",
                ));
            }
        };
        let messages = stream.map(|item| match item {
            Ok(WriteChunk {
                part: Some(write_chunk::Part::Data(data)),
            }) => Ok(WriteMsg::Data(data)),
            Ok(WriteChunk {
                part: Some(write_chunk::Part::Trailer(t)),
            }) => Ok(WriteMsg::Trailer {
                size: t.size,
                checksum: t.checksum,
            }),
            Ok(_) => Err(crate::error::Error::invalid(
                "unexpected message in a write stream",
            )),
            Err(status) => Err(crate::error::Error::Aborted {
                reason: status.message().to_string(),
            }),
        });
        Ok(Response::new(
            self.local.write_stream(header, Box::pin(messages)).await?,
        ))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let ReadRequest { key, inline_max } = request.into_inner();
        Ok(Response::new(self.local.read(&key, inline_max).await?))
    }

    type ReadStreamStream = ChunkStream;

    async fn read_stream(
        &self,
        request: Request<ReadStreamRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let ReadStreamRequest {
            key,
            version,
            offset,
            length,
        } = request.into_inner();
        let version = version
            .ok_or_else(|| Status::invalid_argument("read stream without a version"))?
            .into();
        let rx = self.local.read_stream(key, version, offset, length)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|piece| piece.map(|data| ValueChunk { data }).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    type ScanStream = ScanStream;

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanStream>, Status> {
        let ScanRequest { ranges, inline_max } = request.into_inner();
        if ranges.len() > MAX_SCAN_RANGES {
            return Err(Status::invalid_argument(format!(
                "{} ranges in one scan; at most {MAX_SCAN_RANGES}",
                ranges.len()
            )));
        }
        let ranges: Vec<TokenRange> = ranges
            .into_iter()
            .map(|r| TokenRange {
                start: Token(r.start),
                end: Token(r.end),
            })
            .collect();
        let rx = self.local.scan(ranges, inline_max)?;
        let stream =
            tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncReply>, Status> {
        let SyncRequest { digest } = request.into_inner();
        Ok(Response::new(self.sync.sync(digest).await?))
    }

    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeReply>, Status> {
        let TreeRequest {
            range,
            level,
            nodes,
        } = request.into_inner();
        let range =
            range.ok_or_else(|| Status::invalid_argument("tree request without a range"))?;
        let range = TokenRange {
            start: Token(range.start),
            end: Token(range.end),
        };
        // Checked before converting, so a huge list costs no second copy.
        if nodes.len() > MAX_TREE_NODES {
            return Err(Status::invalid_argument(format!(
                "{} tree nodes asked at once; at most {MAX_TREE_NODES}",
                nodes.len()
            )));
        }
        let nodes = nodes
            .into_iter()
            .map(usize::try_from)
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| Status::invalid_argument("tree node index out of range"))?;
        let hashes = self.local.tree(range, level, &nodes)?;
        Ok(Response::new(TreeReply { hashes }))
    }

    async fn balance(
        &self,
        _request: Request<BalanceRequest>,
    ) -> Result<Response<BalanceReply>, Status> {
        Ok(Response::new(self.sync.balance().await?))
    }

    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            node: self.node.to_string(),
        }))
    }
}
