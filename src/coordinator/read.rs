//! Quorum reads and what they repair: the newest of R answers (expiry
//! judged on cluster time), read repair of the replicas seen stale or
//! corrupt (those slower than the quorum included), and making one replica
//! hold a record: [`Coordinator::push_record`] (whole or streamed from a
//! source) and [`Coordinator::repair_copy`] (a copy the scrub dropped).

use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use super::{Calls, Coordinator, FENCE_ATTEMPTS, Quorum, ReadResult, gather, quorum_error};
use crate::error::{Error, Result};
use crate::proto::{ReadReply, RecordMeta};
use crate::ring::NodeId;
use crate::storage::INLINE_MAX_BYTES;
use crate::version::Version;

/// How long read repair waits for the replicas slower than the quorum.
const READ_REPAIR_WAIT: Duration = Duration::from_secs(5);

impl Coordinator {
    /// Reads the newest record of `key` from R of its replicas; repairs the
    /// stale ones in the background.
    pub async fn get(&self, key: &str, r: Quorum) -> Result<ReadResult> {
        let result = self.read_newest(key, r).await;
        self.inner.metrics.observe_quorum("get", &result);
        result
    }

    async fn read_newest(&self, key: &str, r: Quorum) -> Result<ReadResult> {
        let mut fenced = 0;
        let (mut answers, failed, calls) = loop {
            let (ring, agreed) = self.rings();
            let plan = self.read_plan(&ring, &agreed, key, r)?;
            let fence = self.fence(&ring, &agreed, plan.set_hashes(), fenced > 0);
            let mut calls: Calls<ReadReply> = plan
                .nodes()
                .map(|node| {
                    let (handle, node, key) = (self.replica(node), node.clone(), key.to_string());
                    let fence = fence.clone();
                    async move {
                        let reply = handle
                            .read_fenced(&key, INLINE_MAX_BYTES as u64, fence)
                            .await;
                        (node, reply)
                    }
                    .boxed()
                })
                .collect();
            let (answers, failed) = gather(&mut calls, |ok| plan.shortfall(ok).is_none()).await;
            let answered: Vec<NodeId> = answers.iter().map(|(n, _)| n.clone()).collect();
            let Some(short) = plan.shortfall(&answered) else {
                break (answers, failed, calls);
            };
            // Replicas that place the key elsewhere: learn their ring and
            // read again where it says.
            if fenced < FENCE_ATTEMPTS
                && self
                    .learn_from(failed.iter().map(|(_, e)| e), &mut Vec::new())
                    .await
            {
                fenced += 1;
                continue;
            }
            return Err(quorum_error(short, answered, failed));
        };
        // Replicas whose copy was corrupt have dropped it: for read repair
        // they hold nothing (they are not among the answers that make R).
        let corrupt: Vec<(NodeId, ReadReply)> = failed
            .into_iter()
            .filter(|(_, err)| matches!(err, Error::Corrupt { .. }))
            .map(|(node, _)| (node, ReadReply::default()))
            .collect();
        // Expiry is judged on the latest clock of this node and the replicas
        // that answered: one node's clock running behind changes nothing.
        for (_, reply) in &answers {
            self.inner.clock.observe_time(reply.now);
        }
        let now_ms = self.cluster_now_ms();
        let newest = answers
            .iter()
            .filter_map(|(_, reply)| reply.meta.as_ref())
            .max_by_key(|m| m.version())
            .cloned();
        let value = newest.as_ref().and_then(|m| {
            answers
                .iter()
                .find(|(_, r)| r.meta.as_ref().map(|x| x.version()) == Some(m.version()))
                .and_then(|(_, r)| r.value.clone())
        });
        let mut sources: Vec<NodeId> = newest
            .as_ref()
            .map(|m| {
                answers
                    .iter()
                    .filter(|(_, r)| r.meta.as_ref().map(|x| x.version()) == Some(m.version()))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        // Prefer reading large values from this node.
        sources.sort_by_key(|n| *n != self.inner.node);
        answers.extend(corrupt);
        if let Some(newest) = &newest {
            self.spawn_read_repair(
                newest.clone(),
                value.clone(),
                sources.clone(),
                answers,
                calls,
            );
        }
        match newest {
            Some(meta) if !meta.is_dead_at(now_ms) => Ok(ReadResult {
                meta,
                value,
                sources,
            }),
            _ => Err(Error::not_found(format!("key {key:?}"))),
        }
    }

    /// Sends the newest record to every replica seen holding an older one
    /// (or a corrupt one, now dropped), including those that answer after
    /// the quorum was met.
    fn spawn_read_repair(
        &self,
        newest: RecordMeta,
        value: Option<Bytes>,
        sources: Vec<NodeId>,
        answers: Vec<(NodeId, ReadReply)>,
        mut rest: Calls<ReadReply>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = answers;
            let deadline = tokio::time::Instant::now() + READ_REPAIR_WAIT;
            while let Ok(Some((node, result))) =
                tokio::time::timeout_at(deadline, rest.next()).await
            {
                match result {
                    Ok(reply) => seen.push((node, reply)),
                    Err(Error::Corrupt { .. }) => seen.push((node, ReadReply::default())),
                    Err(_) => {}
                }
            }
            let version = newest.version();
            for (node, reply) in seen {
                let held = reply
                    .meta
                    .as_ref()
                    .map(|m| m.version())
                    .unwrap_or(Version::ZERO);
                if held >= version {
                    continue;
                }
                tracing::debug!(key = %newest.key, replica = %node, "read repair");
                this.inner.metrics.read_repaired();
                let outcome = this
                    .push_record(&node, newest.clone(), value.clone(), &sources)
                    .await;
                if let Err(err) = outcome {
                    tracing::warn!(key = %newest.key, replica = %node, %err, "read repair failed");
                }
            }
        });
    }

    /// Makes `target` hold `meta`'s version: sent whole when small (or a
    /// tombstone), else streamed from one of `sources`.
    pub async fn push_record(
        &self,
        target: &NodeId,
        meta: RecordMeta,
        value: Option<Bytes>,
        sources: &[NodeId],
    ) -> Result<()> {
        let handle = self.replica(target);
        if meta.deleted {
            return handle.write(meta, Bytes::new()).await.map(|_| ());
        }
        if let Some(value) = value {
            return handle.write(meta, value).await.map(|_| ());
        }
        if meta.version().touch != 0 {
            // An expiry change: a target holding the value needs the record
            // alone; one that lacks it (NotFound) is sent the whole value.
            match handle.write(meta.clone(), Bytes::new()).await {
                Err(Error::NotFound { .. }) => {}
                other => return other.map(|_| ()),
            }
        }
        let stream = self.open_value(&meta, sources, 0, 0).await?;
        self.write_pieces(target, &meta, stream).await
    }

    /// Makes `target`, a node that dropped its copy of `key` as corrupt,
    /// hold the newest version the key's other replicas hold (asked all at
    /// once, newest wins, the value fetched from one holding it). False
    /// when none of them answered with a record, or when `target` is no
    /// replica of the key (a surplus copy is better gone).
    pub async fn repair_copy(&self, target: &NodeId, key: &str) -> Result<bool> {
        let ring = self.ring();
        let replicas = ring.nodes_of(key.as_bytes());
        if !replicas.contains(target) && !ring.pending_of(key.as_bytes()).contains(target) {
            return Ok(false);
        }
        let reads = replicas.iter().filter(|n| *n != target).map(|node| {
            let (handle, node) = (self.replica(node), node.clone());
            async move { (node, handle.read(key, INLINE_MAX_BYTES as u64).await) }
        });
        let mut answers: Vec<(NodeId, ReadReply)> = Vec::new();
        for (node, result) in futures::future::join_all(reads).await {
            match result {
                Ok(reply) if reply.meta.is_some() => answers.push((node, reply)),
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%key, replica = %node, %err, "no copy from this replica")
                }
            }
        }
        let Some(newest) = answers
            .iter()
            .filter_map(|(_, r)| r.meta.as_ref())
            .max_by_key(|m| m.version())
            .cloned()
        else {
            return Ok(false);
        };
        let holding: Vec<&(NodeId, ReadReply)> = answers
            .iter()
            .filter(|(_, r)| r.meta.as_ref().map(|m| m.version()) == Some(newest.version()))
            .collect();
        let value = holding.iter().find_map(|(_, r)| r.value.clone());
        let sources: Vec<NodeId> = holding.iter().map(|(n, _)| n.clone()).collect();
        self.push_record(target, newest, value, &sources).await?;
        Ok(true)
    }

    /// Sends `meta`'s version to `target`, a source of it that failed as
    /// corrupt (and dropped its copy), from the other `sources`; in the
    /// background.
    pub(super) fn spawn_source_repair(
        &self,
        target: NodeId,
        meta: RecordMeta,
        sources: Vec<NodeId>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let good: Vec<NodeId> = sources.into_iter().filter(|n| *n != target).collect();
            match this.push_record(&target, meta.clone(), None, &good).await {
                Ok(()) => {
                    tracing::info!(key = %meta.key, replica = %target, "repaired a corrupt copy")
                }
                Err(err) => {
                    tracing::warn!(key = %meta.key, replica = %target, %err, "could not repair a corrupt copy")
                }
            }
        });
    }
}
