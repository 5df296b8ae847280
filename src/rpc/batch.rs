//! Whole writes and reads to one peer, coalesced: a call queued while
//! [`IN_FLIGHT`] calls to that peer are already out goes with the others
//! queued meanwhile in one `Batch` call, so that under load a replica's
//! small calls share one message, one HTTP/2 frame and one seal instead of
//! paying each for itself. A call that finds a slot free goes at once,
//! alone, as a plain `Write` or `Read`: batching adds no wait.
//!
//! Each item keeps its meaning: the replica admits and runs each as
//! `Write` or `Read` would, and answers each on its own (a fence refusal,
//! with its ring view, included); a failure of the whole call fails each
//! item. A peer without `Batch` (an older version, during a rolling
//! upgrade) gets the items one by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::proto::replica_client::ReplicaClient;
use crate::proto::{
    BatchRequest, ItemError, ReadReply, ReadRequest, WriteReply, WriteRequest, read_batch_item,
    write_batch_item,
};
use crate::ring::NodeId;

/// Calls to one peer in flight at once before calls wait to be batched.
/// Two, not more: with 4 the nodes used 7–16 % more CPU per PUT and
/// 11–25 % more per GET under 64 clients (`bench/compare.py`, runs side by
/// side, 2026-12-06), the calls riding in more, smaller batches. With 1
/// about the same as with 2, but one slow call (a large write, a
/// replica's fsync) would hold back every call to that peer.
pub const IN_FLIGHT: usize = 2;
/// Most items in one batch (a replica refuses more).
pub const MAX_ITEMS: usize = 256;
/// Most value bytes gathered into one batch (the message limit is 8 MiB).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// A call waiting for its turn.
enum Job {
    Write(WriteRequest, oneshot::Sender<Result<WriteReply>>),
    Read(ReadRequest, oneshot::Sender<Result<ReadReply>>),
}

/// A job and when its caller's deadline ends.
struct Queued {
    job: Job,
    deadline: Instant,
}

/// The queue of small calls to one peer, and the task that sends them.
#[derive(Clone)]
pub struct CallQueue {
    tx: mpsc::UnboundedSender<Queued>,
}

impl CallQueue {
    /// Starts the task sending `node`'s calls over `client`.
    pub fn start(node: NodeId, client: ReplicaClient<Channel>, metrics: Metrics) -> CallQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_forever(
            Sender {
                node,
                client,
                metrics,
            },
            rx,
        ));
        CallQueue { tx }
    }

    /// Sends `request` (with the calls queued meanwhile, under load) and
    /// waits for its answer; `timeout` is its deadline from now.
    pub async fn write(&self, request: WriteRequest, timeout: Duration) -> Result<WriteReply> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Write(request, reply), timeout)?;
        answer.await.map_err(dropped)?
    }

    /// As [`CallQueue::write`], for a read.
    pub async fn read(&self, request: ReadRequest, timeout: Duration) -> Result<ReadReply> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Read(request, reply), timeout)?;
        answer.await.map_err(dropped)?
    }

    fn queue(&self, job: Job, timeout: Duration) -> Result<()> {
        self.tx
            .send(Queued {
                job,
                deadline: Instant::now() + timeout,
            })
            .map_err(|_| Error::Aborted {
                reason: "the node is shutting down".into(),
            })
    }
}

fn dropped(_: oneshot::error::RecvError) -> Error {
    Error::Aborted {
        reason: "the call was dropped before it was answered".into(),
    }
}

/// What the sending task calls with.
#[derive(Clone)]
struct Sender {
    node: NodeId,
    client: ReplicaClient<Channel>,
    metrics: Metrics,
}

impl Sender {
    /// The error of a failed call, counted as every failed peer call is.
    fn failed(&self, rpc: &'static str, status: tonic::Status) -> Error {
        super::counted_failure(&self.metrics, &self.node, rpc, status)
    }

    fn item_failed(&self, rpc: &'static str, e: ItemError) -> Error {
        self.failed(
            rpc,
            tonic::Status::with_details(tonic::Code::from(e.code), e.message, e.details),
        )
    }

    /// One job as a plain call.
    async fn one(&mut self, job: Job, timeout: Duration) {
        match job {
            Job::Write(request, reply) => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                let result = self.client.write(request).await;
                let _ = reply.send(
                    result
                        .map(|r| r.into_inner())
                        .map_err(|s| self.failed("write", s)),
                );
            }
            Job::Read(request, reply) => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                let result = self.client.read(request).await;
                let _ = reply.send(
                    result
                        .map(|r| r.into_inner())
                        .map_err(|s| self.failed("read", s)),
                );
            }
        }
    }

    /// One call: a plain one for one job, else a `Batch`.
    async fn send(mut self, mut batch: Vec<Queued>) {
        // The call's deadline is the nearest of its items'.
        let now = Instant::now();
        let timeout = batch
            .iter()
            .map(|q| q.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or_default();
        if batch.len() == 1 {
            if let Some(queued) = batch.pop() {
                self.one(queued.job, timeout).await;
            }
            return;
        }
        let mut message = BatchRequest::default();
        let (mut write_replies, mut read_replies) = (Vec::new(), Vec::new());
        for queued in batch {
            match queued.job {
                Job::Write(request, reply) => {
                    message.writes.push(request);
                    write_replies.push(reply);
                }
                Job::Read(request, reply) => {
                    message.reads.push(request);
                    read_replies.push(reply);
                }
            }
        }
        self.metrics
            .batch_sent(message.writes.len() + message.reads.len());
        // Kept to send one by one to a peer without `Batch`; the values
        // are shared, not copied.
        let kept = message.clone();
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        match self.client.batch(request).await {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                for (request, reply) in kept.writes.into_iter().zip(write_replies) {
                    self.one(Job::Write(request, reply), timeout).await;
                }
                for (request, reply) in kept.reads.into_iter().zip(read_replies) {
                    self.one(Job::Read(request, reply), timeout).await;
                }
            }
            Err(status) => {
                for reply in write_replies {
                    let _ = reply.send(Err(self.failed("write", status.clone())));
                }
                for reply in read_replies {
                    let _ = reply.send(Err(self.failed("read", status.clone())));
                }
            }
            Ok(answer) => {
                let answer = answer.into_inner();
                let short = |what: &str| Error::Rpc {
                    node: self.node.clone(),
                    reason: format!("a batch answered without the {what} item"),
                };
                let mut writes = answer.writes.into_iter();
                for reply in write_replies {
                    let result = match writes.next().and_then(|item| item.result) {
                        Some(write_batch_item::Result::Ok(ok)) => Ok(ok),
                        Some(write_batch_item::Result::Error(e)) => {
                            Err(self.item_failed("write", e))
                        }
                        None => Err(short("write")),
                    };
                    let _ = reply.send(result);
                }
                let mut reads = answer.reads.into_iter();
                for reply in read_replies {
                    let result = match reads.next().and_then(|item| item.result) {
                        Some(read_batch_item::Result::Ok(ok)) => Ok(ok),
                        Some(read_batch_item::Result::Error(e)) => Err(self.item_failed("read", e)),
                        None => Err(short("read")),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }
}

/// The value bytes a job carries.
fn size(job: &Job) -> usize {
    match job {
        Job::Write(request, _) => request.value.len(),
        Job::Read(..) => 0,
    }
}

/// Takes queued calls as slots free up: the first waiting, then whatever
/// else queued meanwhile, up to the batch limits.
async fn send_forever(sender: Sender, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = size(&first.job);
        let mut batch = vec![first];
        while batch.len() < MAX_ITEMS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(queued) => {
                    bytes += size(&queued.job);
                    batch.push(queued);
                }
                Err(_) => break,
            }
        }
        let call = sender.clone();
        tokio::spawn(async move {
            call.send(batch).await;
            drop(slot);
        });
    }
}
