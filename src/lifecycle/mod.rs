//! A node's part in membership changes: bootstrap (F18), graceful leave
//! (F4), removal of a dead node (F8), changes of the replication factor
//! (F10), hinted handoff (F15, `hints.rs`), dropping what the node no
//! longer owns once its owners hold it, anti-entropy (F17, `repair.rs`)
//! and the scrub that finds and repairs corrupt copies (F26, `scrub.rs`).
//!
//! Every change is a *transition* of the ring ([`Ring::movements`]),
//! decided by a pure state machine (`machine.rs`, scripted tests in
//! `testscripts/`) that `driver.rs` runs: the node that starts it announces
//! it in gossip (its own state, a removal marker, a replication setting),
//! waits until every live member sees the same ring (so every write from
//! then on also reaches the nodes gaining ranges), asks each gaining node
//! to fetch its ranges (`Sync`), and then announces the end. A gaining node
//! reads each range from enough of its live current replicas to meet every
//! write a majority of them acknowledged, newest version winning. Values
//! are streamed replica to replica, throttled by `--stream-rate`; progress
//! is published in gossip and shown in `/ring`, with what each transition
//! waits for.
//!
//! Guarantees and limits: a transition whose driver dies midway stays under
//! way (writes keep reaching both old and new owners; nothing is lost) until
//! it is issued again. A source that fails midway is skipped if enough
//! other replicas of the same range answered.

pub mod alive;
mod driver;
mod gc;
mod hints;
pub mod machine;
mod repair;
mod scrub;
#[cfg(test)]
mod sim;
mod transfer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::coordinator::Coordinator;
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::proto::{BalanceReply, PurgeReply, SyncReply};
use crate::ring::{MemberState, NodeId, Ring};
use crate::rpc::SyncHandler;
use crate::storage::Store;
use crate::throttle::Throttle;

use self::machine::{Goal, RETRY_PAUSE, Status, check_enough_members};
pub use self::repair::RepairProgress;
pub use self::scrub::ScrubProgress;
pub use self::transfer::{Progress, PurgeReport};

/// How long a node asked to `Sync` waits to see the caller's ring.
const SYNC_RING_WAIT: Duration = Duration::from_secs(15);
/// How long a member the failure detector believes up has to answer a
/// `Ping` before a removal goes ahead without waiting for the detector.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a wait for the ring to settle looks at the members' agreement.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// How often the background tasks look at the ring.
const TICK: Duration = Duration::from_millis(500);

/// Settings of the lifecycle.
#[derive(Debug, Clone, Default)]
pub struct LifecycleOptions {
    /// Bytes per second a transfer into this node may use (`--stream-rate`).
    pub stream_rate: Option<u64>,
    /// Remove members down this long (`--auto-remove-after`).
    pub auto_remove_after: Option<Duration>,
    /// Purge keys no longer owned once the ring settles (off with
    /// `--no-auto-purge`).
    pub auto_purge: bool,
    /// Run anti-entropy on this node's ranges about this often
    /// (`--repair-interval`, jittered ±20 %); `None`: only on demand.
    pub repair_interval: Option<Duration>,
    /// Age after which tombstones every replica holds are dropped
    /// (`--tombstone-grace`, see `gc.rs`).
    pub tombstone_grace: Duration,
    /// The data dir, where `alive.rs` records that the node runs.
    pub data_dir: Option<std::path::PathBuf>,
    /// Set while the node re-syncs after an absence longer than the grace
    /// period; its replica then refuses reads and tree comparisons (shared
    /// with its `LocalReplica`).
    pub catching_up: Arc<AtomicBool>,
    /// Read back and check every record this node holds about this often
    /// (`--scrub-interval`, jittered ±20 %); `None`: never.
    pub scrub_interval: Option<Duration>,
    /// Bytes per second the scrub reads (`--scrub-rate`); `None`: no limit.
    pub scrub_rate: Option<u64>,
    /// Bytes per second of records anti-entropy may move (`--repair-rate`);
    /// `None`: no limit.
    pub repair_rate: Option<u64>,
}

/// What a leave, removal or change of N did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransitionSummary {
    /// What was done.
    pub action: String,
    /// The node concerned, when one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Nodes that received ranges.
    pub receivers: Vec<String>,
    /// Records they stored.
    pub keys: u64,
    /// Value bytes they received.
    pub bytes: u64,
    /// Digest of the ring at the end.
    pub digest: String,
}

/// A transition asked for over the API: done within the wait, or still
/// running in the background.
#[derive(Debug)]
pub enum Started {
    /// Done: what it did.
    Done(TransitionSummary),
    /// Still running: what it is doing now.
    Running(Status),
}

/// What a node holds, published in gossip for the status page and `/ring`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeStats {
    /// Keys held with a live value.
    pub keys: u64,
    /// Bytes the store uses (on disk, or in memory for `--in-memory`).
    pub bytes: u64,
    /// Writes kept for other replicas, not delivered yet.
    pub hints: u64,
    /// Values clients are streaming in (uploads) and out (downloads) now.
    pub streams: (u64, u64),
    /// Back after longer than the tombstone grace period and re-reading
    /// its ranges: serves no reads until done.
    pub catching_up: bool,
}

/// The lifecycle of one node. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node.
    node: NodeId,
    /// Gossip and the ring.
    membership: Arc<Membership>,
    /// Replica handles, value streams.
    coordinator: Coordinator,
    /// This node's store (hints live there too).
    store: Store,
    /// Settings.
    options: LifecycleOptions,
    /// Transfer progress and throttle.
    transfer: transfer::Transfers,
    /// Set while this node is leaving.
    leaving: AtomicBool,
    /// Anti-entropy progress.
    repair: std::sync::Mutex<repair::RepairProgress>,
    /// Scrub progress (its `quarantined` is filled in when read).
    scrub: std::sync::Mutex<ScrubProgress>,
    /// `--repair-rate`: paces the records anti-entropy moves.
    repair_throttle: Throttle,
    /// The transitions this node runs (and the last finished ones).
    transitions: driver::Registry,
}

impl Lifecycle {
    /// A lifecycle for this node; [`Lifecycle::spawn_tasks`] starts it.
    pub fn new(
        membership: Arc<Membership>,
        coordinator: Coordinator,
        store: Store,
        options: LifecycleOptions,
    ) -> Lifecycle {
        let node = membership.node().clone();
        let transfer = transfer::Transfers::new(options.stream_rate);
        let repair_throttle = Throttle::new(options.repair_rate);
        Lifecycle {
            inner: Arc::new(Inner {
                node,
                membership,
                coordinator,
                store,
                options,
                transfer,
                leaving: AtomicBool::new(false),
                repair: std::sync::Mutex::default(),
                scrub: std::sync::Mutex::default(),
                repair_throttle,
                transitions: driver::Registry::default(),
            }),
        }
    }

    /// Starts bootstrap (when joining), hint delivery, purge of ranges no
    /// longer owned, automatic removal, progress publishing, and periodic
    /// anti-entropy and scrub.
    pub fn spawn_tasks(&self) {
        tokio::spawn(self.clone().catch_up());
        tokio::spawn(self.clone().bootstrap());
        tokio::spawn(hints::deliver_forever(self.clone()));
        tokio::spawn(self.clone().watch_ring());
        tokio::spawn(self.clone().publish_progress());
        if let Some(every) = self.inner.options.repair_interval {
            tokio::spawn(self.clone().repair_forever(every));
        }
        if let Some(every) = self.inner.options.scrub_interval {
            tokio::spawn(self.clone().scrub_forever(every));
        }
    }

    /// Periodic scrub, jittered so that replicas do not all read their
    /// disks at once.
    async fn scrub_forever(self, every: Duration) {
        let throttle = Arc::new(Throttle::new(self.inner.options.scrub_rate));
        loop {
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            tokio::time::sleep(every.mul_f64(jitter)).await;
            if !self.inner.membership.is_ready() || self.is_leaving() {
                continue;
            }
            if let Err(err) = scrub::scrub_local(&self, &throttle).await {
                tracing::warn!(%err, "scrub failed");
            }
        }
    }

    /// What this node holds.
    pub fn stats(&self) -> NodeStats {
        let store = &self.inner.store;
        NodeStats {
            keys: store.key_count(),
            bytes: store.disk_bytes(),
            hints: store.hints_pending(),
            streams: self.inner.coordinator.metrics().streams_in_progress(),
            catching_up: self.is_catching_up(),
        }
    }

    /// Scrub progress of this node.
    pub fn scrub_progress(&self) -> ScrubProgress {
        let mut progress = self
            .inner
            .scrub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        progress.quarantined = self.inner.store.quarantined();
        progress
    }

    /// Periodic anti-entropy, jittered so that nodes do not all compare at
    /// once.
    async fn repair_forever(self, every: Duration) {
        loop {
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            tokio::time::sleep(every.mul_f64(jitter)).await;
            let membership = &self.inner.membership;
            if !membership.is_ready()
                || self.is_leaving()
                || self.is_catching_up()
                || membership.ring().in_transition()
            {
                continue;
            }
            if let Err(err) = repair::balance_local(&self).await {
                tracing::warn!(%err, "periodic anti-entropy failed");
            }
        }
    }

    /// Anti-entropy progress of this node (running or last run).
    pub fn repair_progress(&self) -> RepairProgress {
        self.inner
            .repair
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Transfer progress into this node.
    pub fn progress(&self) -> Progress {
        self.inner.transfer.progress()
    }

    /// Whether this node re-syncs after a long absence.
    pub fn is_catching_up(&self) -> bool {
        self.inner.options.catching_up.load(Ordering::Acquire)
    }

    /// Back after longer than the tombstone grace period: re-reads every
    /// range from the other replicas (dropping own expired copies none of
    /// them holds, see `gc.rs`) before the node serves reads again; then
    /// records, as every running node does, that it is alive.
    async fn catch_up(self) {
        let membership = &self.inner.membership;
        if self.is_catching_up() {
            let mut rings = membership.subscribe();
            while !membership.is_ready() {
                if rings.changed().await.is_err() {
                    return;
                }
            }
            tracing::warn!(
                "this node was away longer than the tombstone grace period: re-syncing its ranges \
                 before serving reads"
            );
            loop {
                let ring = membership.ring();
                match self.inner.transfer.resync(&self, &ring).await {
                    Ok(reply) => {
                        tracing::info!(keys = reply.keys, bytes = reply.bytes, "re-sync done");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "re-sync failed; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            self.inner
                .options
                .catching_up
                .store(false, Ordering::Release);
        }
        if let Some(dir) = self.inner.options.data_dir.clone() {
            alive::keep_touching(dir, self.inner.options.tombstone_grace).await;
        }
    }

    /// The node's data dir (`None` with `--in-memory`).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.inner.options.data_dir.as_deref()
    }

    /// Whether this node is leaving.
    pub fn is_leaving(&self) -> bool {
        self.inner.leaving.load(Ordering::Acquire)
    }

    /// Joining: runs the join transition (`machine.rs`): once every live
    /// member sees this node joining, it fetches its ranges, makes a last
    /// pass over them and turns normal, remembering that it did.
    async fn bootstrap(self) {
        let membership = &self.inner.membership;
        let mut rings = membership.subscribe();
        while !membership.is_ready() {
            if rings.changed().await.is_err() {
                return;
            }
        }
        if membership.own_state().await != MemberState::Joining {
            return;
        }
        let driver::Waiter::Started(_, done) = driver::start(&self, Goal::Join) else {
            return;
        };
        match done.await {
            Ok(Ok(summary)) => tracing::info!(
                keys = summary.keys,
                bytes = summary.bytes,
                "bootstrap done: this node is normal"
            ),
            Ok(Err(err)) => tracing::error!(%err, "bootstrap ended without turning normal"),
            Err(_) => {}
        }
    }

    /// What this node's transitions are doing (running ones first, then the
    /// last finished ones), for `/ring` and the status page.
    pub fn transitions(&self) -> Vec<Status> {
        self.inner.transitions.statuses()
    }

    /// Leaves the cluster gracefully (F4): announces leaving, has every
    /// node gaining a range fetch it, then announces that it is gone. With
    /// `until_done` (a SIGTERM) it keeps trying while gainers cannot fetch;
    /// otherwise it gives up after a few failures and turns normal again.
    pub async fn leave(&self, until_done: bool) -> Result<TransitionSummary> {
        if self.inner.leaving.swap(true, Ordering::AcqRel) {
            return Err(Error::Conflict {
                reason: "this node is already leaving".into(),
            });
        }
        let result = match driver::start(self, Goal::Leave { until_done }) {
            driver::Waiter::Started(_, done) => done.await.unwrap_or_else(|_| {
                Err(Error::NotReady {
                    reason: "the node is shutting down".into(),
                })
            }),
            driver::Waiter::Joined(_) => Err(Error::Conflict {
                reason: "this node is already leaving".into(),
            }),
        };
        if result.is_err() {
            self.inner.leaving.store(false, Ordering::Release);
        }
        result
    }

    /// Removes a dead member for good and re-replicates its ranges from the
    /// others (F8). A member the failure detector still believes up is
    /// asked directly first (a connection and a `Ping`, [`PROBE_TIMEOUT`]):
    /// if it answers, it is up and the removal is refused (409). The
    /// removal then runs in the background until done; this waits up to
    /// `wait` for it.
    pub async fn remove(&self, node: &NodeId, wait: Duration) -> Result<Started> {
        let ring = self.inner.membership.ring();
        let member = ring
            .member(node)
            .ok_or_else(|| Error::not_found(format!("no member {node} in the ring")))?;
        if *node == self.inner.node {
            return Err(Error::invalid(
                "a node cannot remove itself; make it leave instead (ringkv leave)",
            ));
        }
        if member.state == MemberState::Removed {
            return Err(Error::Conflict {
                reason: format!("{node} is already removed"),
            });
        }
        let goal = Goal::Remove { node: node.clone() };
        if self.inner.transitions.running(&goal).is_none() && self.answers(node).await {
            return Err(Error::Conflict {
                reason: format!(
                    "{node} is up (it answered); only a dead member can be removed: stop it, or \
                     make it leave with `ringkv leave --node {node}`"
                ),
            });
        }
        self.run_until(goal, wait).await
    }

    /// Whether `node` answers a `Ping` within [`PROBE_TIMEOUT`].
    async fn answers(&self, node: &NodeId) -> bool {
        let handle = self.inner.coordinator.replica(node);
        match tokio::time::timeout(PROBE_TIMEOUT, handle.ping()).await {
            Ok(Ok(answered)) => answered == *node,
            _ => false,
        }
    }

    /// Starts the transition toward `goal` (or finds it running) and waits
    /// up to `wait` for its end.
    async fn run_until(&self, goal: Goal, wait: Duration) -> Result<Started> {
        match driver::start(self, goal) {
            driver::Waiter::Started(running, done) => {
                match tokio::time::timeout(wait, done).await {
                    Ok(Ok(result)) => result.map(Started::Done),
                    Ok(Err(_)) => Err(Error::NotReady {
                        reason: "the node is shutting down".into(),
                    }),
                    Err(_) => Ok(Started::Running(running.status())),
                }
            }
            driver::Waiter::Joined(running) => match running.wait(wait).await {
                Some(Ok(summary)) => Ok(Started::Done(summary)),
                Some(Err(reason)) => Err(Error::NotReady { reason }),
                None => Ok(Started::Running(running.status())),
            },
        }
    }

    /// Changes the cluster's replication factor and copies data to match
    /// (F10); surplus copies are dropped by each node's purge once the new
    /// owners hold them. Runs in the background until done; this waits up
    /// to `wait` for it.
    pub async fn set_replicas(&self, n: usize, wait: Duration) -> Result<Started> {
        if n == 0 {
            return Err(Error::invalid("the replication factor must be at least 1"));
        }
        check_enough_members(&self.inner.membership.ring(), None, Some(n))?;
        self.run_until(Goal::Replicas { n }, wait).await
    }

    /// Waits up to `wait` until the ring has settled: no transition under
    /// way and every live member seeing the same ring. Fails with a
    /// retryable error saying what it waited for.
    async fn settled(&self, wait: Duration) -> Result<Arc<Ring>> {
        let membership = &self.inner.membership;
        let deadline = tokio::time::Instant::now() + wait;
        let mut rings = membership.subscribe();
        loop {
            let ring = membership.ring();
            let lagging = membership.lagging(&ring);
            if !ring.in_transition() && lagging.is_empty() {
                return Ok(ring);
            }
            if tokio::time::Instant::now() >= deadline {
                let what = if ring.in_transition() {
                    let moving: Vec<String> = ring
                        .members()
                        .filter(|m| matches!(m.state, MemberState::Joining | MemberState::Leaving))
                        .map(|m| format!("{} {}", m.id, m.state.as_str()))
                        .collect();
                    format!("a ring change to end ({})", moving.join(", "))
                } else {
                    let names: Vec<&str> = lagging.iter().map(|n| n.as_str()).collect();
                    format!("{} to see this node's ring", names.join(", "))
                };
                return Err(Error::NotReady {
                    reason: format!("waited {wait:?} for {what}; try again later"),
                });
            }
            // Agreement changes without the ring changing: look again
            // every refresh, or at once when the ring changes.
            let _ = tokio::time::timeout(SETTLE_POLL, rings.changed()).await;
        }
    }

    /// Drops the keys this node no longer owns that every owner holds
    /// (`POST /purge`, F19), once the ring has settled (waiting up to
    /// `wait` for it).
    pub async fn purge(&self, wait: Duration) -> Result<PurgeReport> {
        let ring = self.settled(wait).await?;
        transfer::purge(self, &ring).await
    }

    /// The other live members' purges (`POST /purge?all=true`), each
    /// asked over RPC to wait up to `wait` for its ring to settle: what
    /// each one did, or why it could not.
    pub async fn purge_others(&self, wait: Duration) -> Vec<(NodeId, Result<PurgeReport>)> {
        let ring = self.inner.coordinator.ring();
        let others: Vec<NodeId> = ring
            .members()
            .filter(|m| m.live && m.id != self.inner.node && m.state != MemberState::Removed)
            .map(|m| m.id.clone())
            .collect();
        let calls = others.into_iter().map(|member| {
            let this = self.clone();
            async move {
                let handle = this.inner.coordinator.replica(&member);
                let report = handle.purge(&this, wait).await.map(PurgeReport::from);
                (member, report)
            }
        });
        futures::future::join_all(calls).await
    }

    /// Cluster-wide anti-entropy (`POST /balance`) once the ring has
    /// settled (waiting up to `wait` for it): every live member compares
    /// its ranges with their other replicas; the replies summed, with each
    /// member's failures named.
    pub async fn balance_cluster(&self, wait: Duration) -> Result<BalanceReply> {
        let ring = self.settled(wait).await?;
        let members: Vec<NodeId> = ring
            .members()
            .filter(|m| m.live && m.state.owns_ranges())
            .map(|m| m.id.clone())
            .collect();
        let calls = members.iter().map(|member| {
            let this = self.clone();
            let member = member.clone();
            async move {
                let handle = this.inner.coordinator.replica(&member);
                (member, handle.balance(&this).await)
            }
        });
        let mut total = BalanceReply::default();
        for (member, result) in futures::future::join_all(calls).await {
            match result {
                Ok(reply) => {
                    total.ranges += reply.ranges;
                    total.pairs += reply.pairs;
                    total.hashes += reply.hashes;
                    total.leaves += reply.leaves;
                    total.pulled += reply.pulled;
                    total.pushed += reply.pushed;
                    total.tombstones_dropped += reply.tombstones_dropped;
                    total.bytes_sent += reply.bytes_sent;
                    total.bytes_received += reply.bytes_received;
                    total
                        .failed
                        .extend(reply.failed.into_iter().map(|f| format!("{member}: {f}")));
                }
                Err(err) => total.failed.push(format!("{member}: {err}")),
            }
        }
        Ok(total)
    }

    /// Watches the ring: drops what this node no longer owns once the ring
    /// settles, and removes members down longer than `--auto-remove-after`.
    async fn watch_ring(self) {
        let mut purged_digest = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let membership = &self.inner.membership;
            if !membership.is_ready() || self.is_leaving() {
                continue;
            }
            let ring = membership.ring();
            if let Some(after) = self.inner.options.auto_remove_after {
                self.auto_remove(&ring, after).await;
            }
            let settled = !ring.in_transition() && membership.agreed();
            if self.inner.options.auto_purge && settled && purged_digest != Some(ring.digest()) {
                match transfer::purge(&self, &ring).await {
                    Ok(report) => {
                        if report.dropped + report.kept > 0 {
                            tracing::info!(
                                dropped = report.dropped,
                                kept = report.kept,
                                "purged keys this node no longer owns"
                            );
                        }
                        purged_digest = Some(ring.digest());
                    }
                    Err(err) => tracing::debug!(%err, "purge postponed"),
                }
            }
        }
    }

    /// Removes members down for longer than `after`; only the live member
    /// with the smallest id does it, so that one node drives each removal.
    async fn auto_remove(&self, ring: &Ring, after: Duration) {
        let first_live = ring
            .members()
            .filter(|m| m.live && m.state == MemberState::Normal)
            .map(|m| &m.id)
            .min();
        if first_live != Some(&self.inner.node) {
            return;
        }
        let view = self.inner.membership.view();
        for (node, since) in &view.down_since {
            let Some(member) = ring.member(node) else {
                continue;
            };
            if since.elapsed() < after || member.state == MemberState::Removed {
                continue;
            }
            tracing::warn!(%node, down_for = ?since.elapsed(), "removing a member down too long");
            match self.remove(node, Duration::ZERO).await {
                Ok(_) => {}
                // Up after all: the detector will see it soon.
                Err(Error::Conflict { .. }) => {}
                Err(err) => tracing::warn!(%node, %err, "automatic removal failed"),
            }
        }
    }

    /// Publishes transfer, anti-entropy and scrub progress and what this
    /// node holds in gossip while they change.
    async fn publish_progress(self) {
        let (mut last_transfer, mut last_repair) = (String::new(), String::new());
        let (mut last_scrub, mut last_stats) = (String::new(), String::new());
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let transfer = serde_json::to_string(&self.progress()).unwrap_or_default();
            if transfer != last_transfer {
                self.inner.membership.set_transfer(transfer.clone()).await;
                last_transfer = transfer;
            }
            let repair = {
                let progress = self.inner.repair.lock().unwrap_or_else(|p| p.into_inner());
                serde_json::to_string(&*progress).unwrap_or_default()
            };
            if repair != last_repair {
                self.inner.membership.set_repair(repair.clone()).await;
                last_repair = repair;
            }
            let scrub = serde_json::to_string(&self.scrub_progress()).unwrap_or_default();
            if scrub != last_scrub {
                self.inner.membership.set_scrub(scrub.clone()).await;
                last_scrub = scrub;
            }
            let stats = serde_json::to_string(&self.stats()).unwrap_or_default();
            if stats != last_stats {
                self.inner.membership.set_stats(stats.clone()).await;
                last_stats = stats;
            }
        }
    }
}

impl SyncHandler for Lifecycle {
    fn sync(&self, digest: u64) -> BoxFuture<'static, Result<SyncReply>> {
        let this = self.clone();
        async move {
            let membership = &this.inner.membership;
            let deadline = tokio::time::Instant::now() + SYNC_RING_WAIT;
            let mut rings = membership.subscribe();
            let ring = loop {
                let ring = membership.ring();
                if ring.digest() == digest {
                    break ring;
                }
                // Out of time, or the ring is no longer published (stopping).
                if !matches!(
                    tokio::time::timeout_at(deadline, rings.changed()).await,
                    Ok(Ok(()))
                ) {
                    return Err(Error::Unavailable {
                        needed: 1,
                        got: 0,
                        answered: Vec::new(),
                        failed: vec![(
                            this.inner.node.clone(),
                            format!(
                                "this node sees ring {:016x}, not {digest:016x}",
                                ring.digest()
                            ),
                        )],
                    });
                }
            };
            this.inner
                .transfer
                .receive(&this, &ring, crate::storage::INLINE_MAX_BYTES as u64, false)
                .await
        }
        .boxed()
    }

    fn balance(&self) -> BoxFuture<'static, Result<BalanceReply>> {
        let this = self.clone();
        async move { repair::balance_local(&this).await }.boxed()
    }

    fn purge(&self, wait: Duration) -> BoxFuture<'static, Result<PurgeReply>> {
        let this = self.clone();
        async move { this.purge(wait).await.map(PurgeReply::from) }.boxed()
    }
}
