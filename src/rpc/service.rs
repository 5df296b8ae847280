//! The gRPC `Replica` service: decodes requests, checks them, and calls
//! [`LocalReplica`]. Every malformed message is an error reply on that call.
//!
//! Ring-version fencing: a client's read or write carries the placement
//! its coordinator planned it on (`Fence`). When this node's ring places
//! the key on other nodes, it learns the view the request carries (if
//! any) and, if they still differ, refuses with FAILED_PRECONDITION and its
//! own view in the status details: no quorum is then counted on a ring the
//! cluster has moved past, however far the coordinator's gossip lags. A
//! write's refusal also names the key's replicas in this node's last agreed
//! ring, which it needs a quorum of while its agreement lags the
//! coordinator's (a lag no exchange of member records cures).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use prost::Message;

use crate::membership::{Membership, merge};
use crate::metrics::{Metrics, Refusal};
use crate::proto::replica_server::Replica;
use crate::proto::{
    BalanceReply, BalanceRequest, BatchReply, BatchRequest, Fence, FenceRefusal, ItemError,
    PingReply, PingRequest, PurgeReply, PurgeRequest, ReadBatchItem, ReadReply, ReadRequest,
    ReadStreamRequest, ScanItem, ScanRequest, SyncReply, SyncRequest, TreeReply, TreeRequest,
    ValueChunk, WriteBatchItem, WriteChunk, WriteReply, WriteRequest, read_batch_item,
    write_batch_item, write_chunk,
};
use crate::ring::{NodeId, Ring, Token, TokenRange, replica_set_hash};
use crate::rpc::deadline::Deadline;
use crate::rpc::local::{LocalReplica, MAX_SCAN_RANGES, MAX_TREE_NODES};
use crate::rpc::{SyncHandler, WriteMsg};
use crate::stall::StallWatch;

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
    /// The ring client requests are checked against; `None` with
    /// `--no-ring-fence` (fault tests only).
    pub fence: Option<std::sync::Arc<Membership>>,
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

impl ReplicaService {
    /// Refuses a client's read or write of `key` planned on a ring that
    /// places it elsewhere (see the module doc).
    async fn admit_plan(
        &self,
        key: &str,
        fence: Option<Fence>,
        rpc: &'static str,
    ) -> Result<(), Status> {
        let (Some(membership), Some(fence)) = (&self.fence, fence) else {
            return Ok(());
        };
        let write = rpc != "read";
        let accepts = || {
            fence_accepts(
                &membership.ring(),
                &membership.agreed_ring(),
                key,
                &fence,
                write,
            )
        };
        if accepts() {
            return Ok(());
        }
        if let Some(view) = fence.view.clone() {
            membership.learn(merge::from_wire(view)).await;
            if accepts() {
                return Ok(());
            }
        }
        self.metrics.fence_refused(rpc);
        let refusal = fence_refusal(
            membership.ring_view(),
            &membership.agreed_ring(),
            key,
            write,
        );
        Err(Status::with_details(
            tonic::Code::FailedPrecondition,
            format!(
                "ring changed: this replica's ring ({:016x}) places the key elsewhere than the \
                 request's ({:016x}); its view is attached",
                membership.ring().digest(),
                fence.digest
            ),
            refusal.encode_to_vec().into(),
        ))
    }
}

/// Whether a replica on `ring`, whose last agreed ring is `agreed`, takes
/// a client's read or write of `key` planned as `fence` says: the same
/// rings; or, for a write, a quorum of each replica set its ring needs
/// (current and target), and of the set its last agreed ring gives the key
/// unless the coordinator saw every member on this replica's ring already
/// (its agreed ring is this one: a member still on an older ring would
/// not have published this one); for a read, the key's replicas on this
/// replica's ring among the sets read.
///
/// A read is not taken for the replicas of this replica's last agreed
/// ring alone: that ring being agreed here says nothing of the writers.
/// A writer that has seen every live member on the current ring writes
/// to its replicas only, while a member it thinks down (its gossip cut)
/// may still read the older ones, and this replica may not have seen the
/// agreement yet.
pub fn fence_accepts(ring: &Ring, agreed: &Ring, key: &str, fence: &Fence, write: bool) -> bool {
    if ring.digest() == fence.digest && agreed.digest() == fence.agreed {
        return true;
    }
    let key = key.as_bytes();
    if write {
        let current = [
            replica_set_hash(&ring.nodes_of(key)),
            replica_set_hash(&ring.target_nodes_of(key)),
        ];
        let previous = agreed.nodes_of(key);
        let previous_met = previous.is_empty()
            || fence.agreed == ring.digest()
            || fence.sets.contains(&replica_set_hash(&previous));
        current.iter().all(|set| fence.sets.contains(set)) && previous_met
    } else {
        fence.sets.contains(&replica_set_hash(&ring.nodes_of(key)))
    }
}

/// What a replica sends with its refusal: its `view` of the ring and, for
/// a write, the key's replicas in its last agreed ring `agreed`.
pub fn fence_refusal(
    view: Vec<crate::membership::PeerState>,
    agreed: &Ring,
    key: &str,
    write: bool,
) -> FenceRefusal {
    FenceRefusal {
        view: Some(merge::to_wire(&view)),
        previous: if write {
            agreed
                .nodes_of(key.as_bytes())
                .iter()
                .map(|n| n.to_string())
                .collect()
        } else {
            Vec::new()
        },
        previous_replicas: agreed.replicas() as u32,
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ValueChunk, Status>> + Send>>;
type ScanStream = Pin<Box<dyn Stream<Item = Result<ScanItem, Status>> + Send>>;

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        self.admit_write(request.extensions().get::<Deadline>())?;
        let WriteRequest { meta, value, fence } = request.into_inner();
        let meta = meta.ok_or_else(|| Status::invalid_argument("write without meta"))?;
        self.admit_plan(&meta.key, fence, "write").await?;
        Ok(Response::new(self.local.write(meta, value).await?))
    }

    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchReply>, Status> {
        let admitted = self.admit_write(request.extensions().get::<Deadline>());
        let BatchRequest { writes, reads } = request.into_inner();
        if writes.len() + reads.len() > super::batch::MAX_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a batch of {} items; at most {}",
                writes.len() + reads.len(),
                super::batch::MAX_ITEMS
            )));
        }
        let admitted = &admitted;
        let writes = futures::future::join_all(writes.into_iter().map(|item| async move {
            let WriteRequest { meta, value, fence } = item;
            let result = async {
                admitted.clone()?;
                let meta = meta.ok_or_else(|| Status::invalid_argument("write without meta"))?;
                self.admit_plan(&meta.key, fence, "write").await?;
                Ok::<_, Status>(self.local.write(meta, value).await?)
            }
            .await;
            WriteBatchItem {
                result: Some(match result {
                    Ok(reply) => write_batch_item::Result::Ok(reply),
                    Err(status) => write_batch_item::Result::Error(item_error(&status)),
                }),
            }
        }));
        let reads = futures::future::join_all(reads.into_iter().map(|item| async move {
            let ReadRequest {
                key,
                inline_max,
                fence,
            } = item;
            let result = async {
                self.admit_plan(&key, fence, "read").await?;
                Ok::<_, Status>(self.local.read(&key, inline_max).await?)
            }
            .await;
            ReadBatchItem {
                result: Some(match result {
                    Ok(reply) => read_batch_item::Result::Ok(reply),
                    Err(status) => read_batch_item::Result::Error(item_error(&status)),
                }),
            }
        }));
        let (writes, reads) = futures::future::join(writes, reads).await;
        Ok(Response::new(BatchReply { writes, reads }))
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<WriteChunk>>,
    ) -> Result<Response<WriteReply>, Status> {
        self.admit_write(request.extensions().get::<Deadline>())?;
        let mut stream = request.into_inner();
        let (header, fence) = match stream.next().await {
            Some(Ok(WriteChunk {
                part: Some(write_chunk::Part::Header(header)),
                fence,
            })) => (header, fence),
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "a write stream must start with a header",
                ));
            }
        };
        self.admit_plan(&header.key, fence, "write_stream").await?;
        let messages = stream.map(|item| match item {
            Ok(WriteChunk {
                part: Some(write_chunk::Part::Data(data)),
                ..
            }) => Ok(WriteMsg::Data(data)),
            Ok(WriteChunk {
                part: Some(write_chunk::Part::Trailer(t)),
                ..
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
        let ReadRequest {
            key,
            inline_max,
            fence,
        } = request.into_inner();
        self.admit_plan(&key, fence, "read").await?;
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
        let ScanRequest {
            ranges,
            inline_max,
            limit,
        } = request.into_inner();
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
        let rx = self.local.scan(ranges, inline_max, limit)?;
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

    async fn purge(&self, request: Request<PurgeRequest>) -> Result<Response<PurgeReply>, Status> {
        let wait = std::time::Duration::from_millis(request.into_inner().wait_ms);
        Ok(Response::new(self.sync.purge(wait).await?))
    }

    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            node: self.node.to_string(),
        }))
    }
}

/// A batch item's failure as it travels: the status `Write` or `Read`
/// would have answered (code, message and details: a fence refusal's ring
/// view included).
fn item_error(status: &Status) -> ItemError {
    ItemError {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: status.details().to_vec().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{Quorum, WritePlan};
    use crate::ring::{Member, MemberState};

    fn member(i: u64, state: MemberState) -> Member {
        Member {
            id: NodeId::parse(&format!("n{i}:1")).unwrap(),
            zone: String::new(),
            state,
            live: true,
            tokens: (0..8)
                .map(|t| Token(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t << 56)))
                .collect(),
        }
    }

    /// Rings of three members, then a fourth joining, then normal.
    fn rings() -> (Ring, Ring, Ring) {
        let three: Vec<Member> = (0..3).map(|i| member(i, MemberState::Normal)).collect();
        let with = |state| {
            let mut all = three.clone();
            all.push(member(3, state));
            Ring::new(all, 3)
        };
        (
            Ring::new(three.clone(), 3),
            with(MemberState::Joining),
            with(MemberState::Normal),
        )
    }

    fn write_fence(ring: &Ring, agreed: &Ring, key: &str) -> Fence {
        let plan = WritePlan::new(ring, agreed, key.as_bytes(), Quorum::Majority).unwrap();
        Fence {
            digest: ring.digest(),
            agreed: agreed.digest(),
            sets: plan.set_hashes(),
            view: None,
        }
    }

    fn read_fence(ring: &Ring, agreed: &Ring, key: &str) -> Fence {
        Fence {
            digest: ring.digest(),
            agreed: agreed.digest(),
            sets: vec![replica_set_hash(&ring.nodes_of(key.as_bytes()))],
            view: None,
        }
    }

    /// A key the fourth member takes over.
    fn moved_key(before: &Ring, after: &Ring) -> String {
        (0..10_000)
            .map(|k| format!("key{k}"))
            .find(|k| {
                replica_set_hash(&before.nodes_of(k.as_bytes()))
                    != replica_set_hash(&after.nodes_of(k.as_bytes()))
            })
            .expect("a moved key")
    }

    /// The coordinator's agreement ahead of the replica's: its plan leaves
    /// out the replicas the replica's agreed ring gives the key, which no
    /// view of member records fixes; the set the refusal names does.
    #[test]
    fn a_replica_whose_agreement_lags_is_met_with_the_set_it_names() {
        let (old, _, normal) = rings();
        let key = moved_key(&old, &normal);
        let mut five: Vec<Member> = normal.members().cloned().collect();
        five.push(member(4, MemberState::Joining));
        let five = Ring::new(five, 3);
        // Both on the ring with a fifth member joining; the coordinator saw
        // every member on the four-member ring, the replica only on three.
        let mut plan = WritePlan::new(&five, &normal, key.as_bytes(), Quorum::Majority).unwrap();
        let fence = |plan: &WritePlan| Fence {
            digest: five.digest(),
            agreed: normal.digest(),
            sets: plan.set_hashes(),
            view: None,
        };
        assert!(!fence_accepts(&five, &old, &key, &fence(&plan), true));
        plan.require(old.nodes_of(key.as_bytes()), 2);
        assert!(fence_accepts(&five, &old, &key, &fence(&plan), true));
    }

    #[test]
    fn a_request_planned_on_a_ring_the_cluster_left_is_refused() {
        let (old, joining, normal) = rings();
        let key = moved_key(&old, &normal);
        // Same rings: taken.
        assert!(fence_accepts(
            &old,
            &old,
            &key,
            &write_fence(&old, &old, &key),
            true
        ));
        // A coordinator that never saw the join, at a replica where every
        // member saw it: refused, reads and writes.
        assert!(!fence_accepts(
            &normal,
            &joining,
            &key,
            &write_fence(&old, &old, &key),
            true
        ));
        assert!(!fence_accepts(
            &normal,
            &normal,
            &key,
            &read_fence(&old, &old, &key),
            false
        ));
        // A write planned while the join ran (the joiner pending) covers
        // the replicas of both rings: taken by a replica already past it.
        assert!(fence_accepts(
            &normal,
            &joining,
            &key,
            &write_fence(&joining, &joining, &key),
            true
        ));
        // The joiner normal on the coordinator's ring, not yet seen so by
        // every member: its writes still need the joining ring's replicas.
        let fresh = write_fence(&normal, &joining, &key);
        assert!(fence_accepts(&joining, &joining, &key, &fresh, true));
        // A coordinator that believes every member moved on, at a replica
        // that does not know it yet: refused (a member may read the old
        // replicas).
        assert!(!fence_accepts(
            &joining,
            &joining,
            &key,
            &write_fence(&normal, &normal, &key),
            true
        ));
        // At a replica on the same ring that has not yet seen every member
        // on it: taken, the coordinator saw them.
        let vouched = write_fence(&normal, &normal, &key);
        assert!(fence_accepts(&normal, &joining, &key, &vouched, true));
        // But a coordinator that cannot vouch for it (its agreed ring is
        // older, as on a node cut off from the others) must cover the
        // replica's agreed ring too.
        let unvouched = Fence {
            agreed: old.digest(),
            ..write_fence(&normal, &normal, &key)
        };
        assert!(!fence_accepts(&normal, &joining, &key, &unvouched, true));
        // Reading the old replicas only is refused by a replica past the
        // join, even one that has not yet seen every member past it: a
        // writer that has writes to the new replicas only, and the reader
        // may be a member it counts as down.
        let old_read = read_fence(&joining, &joining, &key);
        assert!(!fence_accepts(&normal, &joining, &key, &old_read, false));
        assert!(!fence_accepts(&normal, &normal, &key, &old_read, false));
        // Reading both (the reader's agreed ring is the old one) is taken.
        let both = Fence {
            sets: vec![
                replica_set_hash(&normal.nodes_of(key.as_bytes())),
                replica_set_hash(&joining.nodes_of(key.as_bytes())),
            ],
            ..read_fence(&normal, &joining, &key)
        };
        assert!(fence_accepts(&normal, &joining, &key, &both, false));
    }

    #[test]
    fn a_key_the_change_does_not_move_is_taken_on_any_of_the_rings() {
        let (old, _, normal) = rings();
        let kept = (0..10_000)
            .map(|k| format!("key{k}"))
            .find(|k| {
                replica_set_hash(&old.nodes_of(k.as_bytes()))
                    == replica_set_hash(&normal.nodes_of(k.as_bytes()))
            })
            .expect("a key that stays");
        assert!(fence_accepts(
            &normal,
            &normal,
            &kept,
            &write_fence(&old, &old, &kept),
            true
        ));
        assert!(fence_accepts(
            &normal,
            &normal,
            &kept,
            &read_fence(&old, &old, &kept),
            false
        ));
    }
}
