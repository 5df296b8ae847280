//! Quorum reads and what they repair: the newest of R answers (expiry
//! judged on cluster time), read repair of the replicas seen stale or
//! corrupt (those slower than the quorum included), and making one replica
//! hold a record: [`Coordinator::push_record`] (whole or streamed from a
//! source) and [`Coordinator::repair_copy`] (a copy the scrub dropped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{Calls, Coordinator, FENCE_ATTEMPTS, Quorum, ReadResult, quorum_error};
use crate::error::{Error, Result};
use crate::proto::{Fence, ReadReply, RecordMeta};
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
            // This node first, then the replicas seen up.
            let (mut first, mut rest) = plan.waves(|node| match ring.member(node) {
                _ if *node == self.inner.node => 0,
                Some(member) if member.live => 1,
                _ => 2,
            });
            if self
                .inner
                .reads
                .full_read_due(self.inner.options.full_read_every)
            {
                first.append(&mut rest);
            }
            // The first asked sends the value; the others only its record.
            let mut calls: Calls<ReadReply> = first
                .iter()
                .enumerate()
                .map(|(i, node)| self.read_call(node, key, i == 0, fence.clone()))
                .collect();
            let (answers, failed) = self
                .gather_read(&mut calls, rest, key, &fence, |ok| {
                    plan.shortfall(ok).is_none()
                })
                .await;
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
        let mut newest = answers
            .iter()
            .filter_map(|(_, reply)| reply.meta.as_ref())
            .max_by_key(|m| m.version())
            .cloned();
        let mut value = newest.as_ref().and_then(|m| {
            answers.iter().find_map(|(_, r)| {
                (r.meta.as_ref().map(|x| x.version()) == Some(m.version()))
                    .then(|| r.value.clone())
                    .flatten()
            })
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
        if let Some(meta) = newest
            .as_ref()
            .filter(|m| value.is_none() && is_inline(m) && !m.is_dead_at(now_ms))
        {
            // The replica that sent its value held an older one. A source
            // may hold a newer record by now: that one is read instead (it
            // is as new as the quorum's at least), not the version gone.
            let Some((held, held_value, node)) = self.fetch_inline(meta, &sources).await else {
                // Not NotFound: the key exists, its value could not be read.
                return Err(Error::Unavailable {
                    needed: 1,
                    got: 0,
                    answered: Vec::new(),
                    failed: sources
                        .into_iter()
                        .map(|n| (n, "could not send the newest value".to_string()))
                        .collect(),
                });
            };
            if held.version() != meta.version() {
                sources = vec![node];
            }
            (newest, value) = (Some(held), held_value);
        }
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

    /// A read of `key` from `node`, with the value when `with_value` and
    /// it is small; a peer's answer times feed the hedge delay.
    fn read_call(
        &self,
        node: &NodeId,
        key: &str,
        with_value: bool,
        fence: Option<Fence>,
    ) -> BoxFuture<'static, (NodeId, Result<ReadReply>)> {
        let (handle, node, key) = (self.replica(node), node.clone(), key.to_string());
        let remote = node != self.inner.node;
        let this = self.clone();
        let inline_max = if with_value {
            INLINE_MAX_BYTES as u64
        } else {
            0
        };
        async move {
            let started = Instant::now();
            let reply = handle.read_fenced(&key, inline_max, fence).await;
            if remote && reply.is_ok() {
                this.inner.reads.observe(started.elapsed());
            }
            (node, reply)
        }
        .boxed()
    }

    /// Polls `calls` until the nodes that answered are `enough`, asking
    /// the nodes of `rest` too (with the value) as soon as a call fails or
    /// the first calls take longer than the hedge delay; the calls still
    /// running stay in `calls`.
    async fn gather_read(
        &self,
        calls: &mut Calls<ReadReply>,
        mut rest: Vec<NodeId>,
        key: &str,
        fence: &Option<Fence>,
        enough: impl Fn(&[NodeId]) -> bool,
    ) -> (Vec<(NodeId, ReadReply)>, Vec<(NodeId, Error)>) {
        let mut ok: Vec<(NodeId, ReadReply)> = Vec::new();
        let mut succeeded: Vec<NodeId> = Vec::new();
        let mut failed = Vec::new();
        let hedge = tokio::time::sleep(self.inner.reads.hedge_delay());
        tokio::pin!(hedge);
        while !enough(&succeeded) {
            let widen = tokio::select! {
                next = calls.next() => match next {
                    Some((node, Ok(answer))) => {
                        succeeded.push(node.clone());
                        ok.push((node, answer));
                        false
                    }
                    Some((node, Err(err))) => {
                        tracing::debug!(replica = %node, %err, "replica call failed");
                        failed.push((node, err));
                        true
                    }
                    None if rest.is_empty() => break,
                    None => true,
                },
                () = &mut hedge, if !rest.is_empty() => {
                    tracing::debug!(%key, "read hedged: its first replicas are slow");
                    true
                }
            };
            if widen {
                for node in rest.drain(..) {
                    calls.push(self.read_call(&node, key, true, fence.clone()));
                }
            }
        }
        (ok, failed)
    }

    /// `meta`'s small value, or a newer record (and its value), read from
    /// the first of `sources` that holds either, with that source; `None`
    /// when none does.
    pub(super) async fn fetch_inline(
        &self,
        meta: &RecordMeta,
        sources: &[NodeId],
    ) -> Option<(RecordMeta, Option<Bytes>, NodeId)> {
        for node in sources {
            match self
                .replica(node)
                .read(&meta.key, INLINE_MAX_BYTES as u64)
                .await
            {
                Ok(ReadReply {
                    meta: Some(held),
                    value,
                    ..
                }) if held.version() >= meta.version()
                    && (value.is_some() || held.deleted || !is_inline(&held)) =>
                {
                    return Some((held, value, node.clone()));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(key = %meta.key, replica = %node, %err, "no value from this source")
                }
            }
        }
        None
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

/// Whether a read reply carries `meta`'s value (a live value small enough).
fn is_inline(meta: &RecordMeta) -> bool {
    !meta.deleted && meta.size <= INLINE_MAX_BYTES as u64
}

/// What a node's reads learn as they go: how long peers take to answer one
/// (a moving mean, for the hedge delay) and how many reads there were (for
/// full reads).
#[derive(Debug, Default)]
pub(super) struct ReadStats {
    /// Mean time a peer took to answer a read, µs (0: none seen yet).
    mean_us: AtomicU64,
    /// Reads planned so far.
    count: AtomicU64,
}

impl ReadStats {
    /// Shortest hedge delay: below it, a loaded machine's scheduling noise
    /// alone would send reads to every replica.
    const MIN_HEDGE: Duration = Duration::from_millis(5);
    /// Longest hedge delay, however slow peers have been.
    const MAX_HEDGE: Duration = Duration::from_secs(1);

    /// Counts a peer's answer that took `took`.
    fn observe(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // A mean over about the last 16 answers.
        let _ = self
            .mean_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    took
                } else {
                    mean - mean / 16 + took / 16
                })
            });
    }

    /// How long a read waits for its first replicas before asking the
    /// others: three times the mean answer, so that only a replica far
    /// slower than usual (stopped, starved) is worked around, and a
    /// cluster slow all over (overloaded) does not double its reads.
    fn hedge_delay(&self) -> Duration {
        let mean = Duration::from_micros(self.mean_us.load(Ordering::Relaxed));
        (mean * 3).clamp(Self::MIN_HEDGE, Self::MAX_HEDGE)
    }

    /// Whether the read being planned is one of every `every` that asks all
    /// the replicas (1: each one; 0: none).
    fn full_read_due(&self, every: u64) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        every != 0 && n.is_multiple_of(every)
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn the_hedge_delay_follows_the_mean_answer_within_its_bounds() {
        let stats = ReadStats::default();
        assert_eq!(stats.hedge_delay(), ReadStats::MIN_HEDGE);
        for _ in 0..200 {
            stats.observe(Duration::from_millis(10));
        }
        let delay = stats.hedge_delay();
        assert!(
            delay > Duration::from_millis(29) && delay <= Duration::from_millis(30),
            "{delay:?}"
        );
        stats.observe(Duration::from_secs(60));
        assert_eq!(stats.hedge_delay(), ReadStats::MAX_HEDGE);
        for _ in 0..400 {
            stats.observe(Duration::from_micros(100));
        }
        assert_eq!(stats.hedge_delay(), ReadStats::MIN_HEDGE);
    }

    #[test]
    fn one_read_in_every_asks_all() {
        let stats = ReadStats::default();
        let full = (0..30).filter(|_| stats.full_read_due(10)).count();
        assert_eq!(full, 3);
        assert!((0..5).all(|_| stats.full_read_due(1)));
        assert!((0..5).all(|_| !stats.full_read_due(0)));
    }
}
