//! Values streamed piece by piece: a streamed write handed to every
//! replica's stream at once through bounded channels (a replica that stalls
//! is dropped; the write is abandoned when fewer than W remain), the
//! client's body read in pieces under the size limit, and value streams read
//! from one source and resumed from the next when it fails midway. Memory
//! stays bounded by `replicas x STREAM_QUEUE_PIECES x STREAM_PIECE_BYTES`
//! whatever the value's size.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{Coordinator, Refused, WritePlan, WriteResult, quorum_error};
use crate::error::{Error, Result};
use crate::metrics::Direction;
use crate::proto::{Fence, RecordMeta};
use crate::ring::NodeId;
use crate::rpc::WriteMsg;

/// Bytes gathered from the client before they go to the replicas as one
/// stream message; 256 KiB keeps messages few without much buffering.
pub const STREAM_PIECE_BYTES: usize = 256 * 1024;
/// Pieces queued per replica stream: enough to keep every replica busy
/// while bounding memory (4 x 256 KiB per replica).
const STREAM_QUEUE_PIECES: usize = 4;
/// A replica stream that accepts no piece for this long is dropped.
pub const STREAM_STEP_TIMEOUT: Duration = Duration::from_secs(10);

impl Coordinator {
    /// Reads up to `limit` bytes from the body (the first piece), enforcing
    /// the size limit; `ended` tells whether the body is over.
    pub(super) async fn read_piece(
        &self,
        body: &mut (impl Stream<Item = Result<Bytes>> + Unpin),
        limit: usize,
        already: u64,
    ) -> Result<(Bytes, bool)> {
        // Frames are kept as they come and joined once at the end: a small
        // body arriving in one frame is never copied, and no buffer is sized
        // for the limit before we know the body needs it.
        let mut frames: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        let ended = loop {
            if len >= limit {
                break false;
            }
            match body.next().await {
                Some(Ok(data)) => {
                    let total = already + len as u64 + data.len() as u64;
                    if total > self.max_value_size() {
                        return Err(Error::TooLarge {
                            size: total,
                            limit: self.max_value_size(),
                        });
                    }
                    if !data.is_empty() {
                        len += data.len();
                        frames.push(data);
                    }
                }
                Some(Err(err)) => return Err(err),
                None => break true,
            }
        };
        let piece = if frames.len() == 1 {
            frames.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(len);
            for frame in &frames {
                joined.extend_from_slice(frame);
            }
            joined.freeze()
        };
        Ok((piece, ended))
    }

    pub(super) async fn write_streamed(
        &self,
        header: RecordMeta,
        first: Bytes,
        mut body: impl Stream<Item = Result<Bytes>> + Send + Unpin,
        plan: WritePlan,
        fence: Option<Fence>,
    ) -> Result<WriteResult> {
        let _streaming = self.inner.metrics.stream_started(Direction::In);
        let (result_tx, result_rx) = mpsc::unbounded_channel();
        let mut streams: Vec<(NodeId, mpsc::Sender<WriteMsg>)> = Vec::new();
        for node in plan.nodes() {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE_PIECES);
            let handle = self.replica(node);
            let (header, result_tx, node2) = (header.clone(), result_tx.clone(), node.clone());
            let fence = fence.clone();
            tokio::spawn(async move {
                let result = handle.write_stream(header, fence, rx).await;
                let _ = result_tx.send((node2, result.map(|_| ())));
            });
            streams.push((node.clone(), tx));
        }
        drop(result_tx);
        let mut failed: Vec<(NodeId, String)> = Vec::new();
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut piece = first;
        loop {
            if !piece.is_empty() {
                hasher.update(&piece);
                size += piece.len() as u64;
                fan_out(&mut streams, &mut failed, WriteMsg::Data(piece)).await;
                if !plan.satisfied(streams.iter().map(|(n, _)| n)) {
                    // Dropping the senders aborts every replica's write.
                    return Err(unavailable(&plan, &streams, failed));
                }
            }
            let (next, ended) = self.read_piece(&mut body, STREAM_PIECE_BYTES, size).await?;
            piece = next;
            if ended {
                if !piece.is_empty() {
                    hasher.update(&piece);
                    size += piece.len() as u64;
                    fan_out(&mut streams, &mut failed, WriteMsg::Data(piece)).await;
                }
                break;
            }
        }
        let checksum = Bytes::copy_from_slice(hasher.finalize().as_bytes());
        fan_out(
            &mut streams,
            &mut failed,
            WriteMsg::Trailer {
                size,
                checksum: checksum.clone(),
            },
        )
        .await;
        drop(streams);
        let (acked, rest) = match await_quorum(result_rx, &plan).await {
            Ok(done) => done,
            Err(Refused { acked, failed }) => {
                // A stream cannot be sent again: the client is told to.
                if self
                    .learn_from(failed.iter().map(|(_, e)| e), &mut Vec::new())
                    .await
                {
                    return Err(Error::NotReady {
                        reason: format!(
                            "the ring changed while {} streamed in: its replicas place it on \
                             other nodes now; send it again",
                            header.key
                        ),
                    });
                }
                return Err(quorum_error(plan.shortfall(&acked), acked, failed));
            }
        };
        // Replicas that failed the write get a hint with the whole record.
        let mut meta = header;
        meta.size = size;
        meta.checksum = checksum;
        let written = WriteResult::new(&meta, &plan, &acked);
        let this = self.clone();
        tokio::spawn(async move {
            for (node, err) in rest.collect().await {
                this.hint(&node, &meta, None, &err);
            }
        });
        Ok(written)
    }

    /// Streams the value `pieces` carries to `target` as `meta`'s version;
    /// the target checks size and checksum before it commits.
    pub async fn write_pieces(
        &self,
        target: &NodeId,
        meta: &RecordMeta,
        mut pieces: impl Stream<Item = Result<Bytes>> + Unpin,
    ) -> Result<()> {
        let handle = self.replica(target);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_PIECES);
        let mut header = meta.clone();
        header.size = 0;
        header.checksum = Bytes::new();
        let write = tokio::spawn(async move { handle.write_stream(header, None, rx).await });
        while let Some(piece) = pieces.next().await {
            if tx.send(WriteMsg::Data(piece?)).await.is_err() {
                break;
            }
        }
        let _ = tx
            .send(WriteMsg::Trailer {
                size: meta.size,
                checksum: meta.checksum.clone(),
            })
            .await;
        drop(tx);
        write
            .await
            .map_err(|e| Error::internal(format!("stream write task: {e}")))?
            .map(|_| ())
    }

    /// The bytes `offset..offset+length` (0 = to the end) of the value
    /// `meta` describes, read from the first of `sources` that serves them
    /// and resumed from the next one if a source fails midway. A source
    /// that fails as corrupt is sent the value from the others in the
    /// background.
    pub async fn open_value(
        &self,
        meta: &RecordMeta,
        sources: &[NodeId],
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let end = if length == 0 {
            meta.size
        } else {
            offset + length
        };
        let source = OpenSources {
            coordinator: self.clone(),
            meta: meta.clone(),
            nodes: sources.to_vec(),
        };
        // Open the first stream now so that "no source at all" is an error
        // before the response starts.
        let (mut index, mut stream) = source.open_from(0, offset, end).await?;
        Ok(async_stream::try_stream! {
            let mut position = offset;
            while position < end {
                let step = tokio::time::timeout(STREAM_STEP_TIMEOUT, stream.next()).await;
                match step {
                    Ok(Some(Ok(piece))) => {
                        position += piece.len() as u64;
                        yield piece;
                    }
                    failure => {
                        let reason = match failure {
                            Ok(Some(Err(err))) => {
                                source.repair_if_corrupt(index, &err);
                                err.to_string()
                            }
                            Ok(None) => "stream ended early".to_string(),
                            _ => "timed out".to_string(),
                        };
                        tracing::warn!(key = %source.meta.key, %reason, "value stream failed; trying another replica");
                        (index, stream) = source
                            .open_from(index + 1, position, end)
                            .await
                            .map_err(|err| Error::Aborted {
                                reason: format!(
                                    "no replica could finish streaming {:?}: {reason}; {err}",
                                    source.meta.key
                                ),
                            })?;
                    }
                }
            }
        }
        .boxed())
    }
}

/// The replicas a value is streamed from, in order of preference.
struct OpenSources {
    /// Opens the streams and repairs corrupt sources.
    coordinator: Coordinator,
    /// The value's record.
    meta: RecordMeta,
    /// Nodes holding exactly `meta`'s version.
    nodes: Vec<NodeId>,
}

impl OpenSources {
    /// Opens `start..end` of the value on the first source from `first` on
    /// that serves it: its index and the stream.
    async fn open_from(
        &self,
        first: usize,
        start: u64,
        end: u64,
    ) -> Result<(usize, BoxStream<'static, Result<Bytes>>)> {
        let mut last_error = None;
        for (index, node) in self.nodes.iter().enumerate().skip(first) {
            let handle = self.coordinator.replica(node);
            match handle
                .read_stream(&self.meta.key, self.meta.version(), start, end - start)
                .await
            {
                Ok(stream) => return Ok((index, stream)),
                Err(err) => {
                    self.repair_if_corrupt(index, &err);
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::not_found(format!("{:?}", self.meta.key))))
    }

    /// Sends the value to source `index` from the others when `err` says
    /// its copy is corrupt.
    fn repair_if_corrupt(&self, index: usize, err: &Error) {
        if let (Error::Corrupt { .. }, Some(node)) = (err, self.nodes.get(index)) {
            self.coordinator.spawn_source_repair(
                node.clone(),
                self.meta.clone(),
                self.nodes.clone(),
            );
        }
    }
}

/// Hands `msg` to every replica stream, dropping those that fail or stall.
async fn fan_out(
    streams: &mut Vec<(NodeId, mpsc::Sender<WriteMsg>)>,
    failed: &mut Vec<(NodeId, String)>,
    msg: WriteMsg,
) {
    let sends = streams.iter().map(|(_, tx)| {
        let msg = msg.clone();
        async move {
            match tokio::time::timeout(STREAM_STEP_TIMEOUT, tx.send(msg)).await {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some("replica stream failed".to_string()),
                Err(_) => Some(format!("replica stalled for {STREAM_STEP_TIMEOUT:?}")),
            }
        }
    });
    let outcomes = futures::future::join_all(sends).await;
    let mut kept = Vec::with_capacity(streams.len());
    for ((node, tx), outcome) in streams.drain(..).zip(outcomes) {
        match outcome {
            None => kept.push((node, tx)),
            Some(reason) => failed.push((node, reason)),
        }
    }
    *streams = kept;
}

fn unavailable(
    plan: &WritePlan,
    streams: &[(NodeId, mpsc::Sender<WriteMsg>)],
    failed: Vec<(NodeId, String)>,
) -> Error {
    let (needed, got) = plan.shortfall(streams.iter().map(|(n, _)| n));
    Error::Unavailable {
        needed,
        got,
        answered: streams.iter().map(|(n, _)| n.clone()).collect(),
        failed,
    }
}

/// The replicas that failed a streamed write: those seen failing before the
/// quorum, then those failing after it.
struct Failures {
    seen: Vec<(NodeId, Error)>,
    rx: mpsc::UnboundedReceiver<(NodeId, Result<()>)>,
}

impl Failures {
    async fn collect(mut self) -> Vec<(NodeId, Error)> {
        while let Some((node, result)) = self.rx.recv().await {
            if let Err(err) = result {
                self.seen.push((node, err));
            }
        }
        self.seen
    }
}

/// Waits until the replicas that confirmed a streamed write satisfy `plan`
/// (or every one of its nodes answered).
async fn await_quorum(
    mut rx: mpsc::UnboundedReceiver<(NodeId, Result<()>)>,
    plan: &WritePlan,
) -> std::result::Result<(Vec<NodeId>, Failures), Refused> {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    while !plan.satisfied(&ok) && ok.len() + failed.len() < plan.len() {
        match rx.recv().await {
            Some((node, Ok(()))) => ok.push(node),
            Some((node, Err(err))) => {
                tracing::debug!(replica = %node, %err, "replica write failed");
                failed.push((node, err));
            }
            None => break,
        }
    }
    if !plan.satisfied(&ok) {
        return Err(Refused { acked: ok, failed });
    }
    Ok((ok, Failures { seen: failed, rx }))
}
