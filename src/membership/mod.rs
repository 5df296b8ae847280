//! Cluster membership over gossip (F7), backed by chitchat (Scuttlebutt
//! anti-entropy gossip with phi-accrual failure detection) on UDP, on the
//! same port number as the node's TCP port (F1).
//!
//! Each node publishes a few keys about itself ([`KEY_TOKENS`], [`KEY_ZONE`],
//! [`KEY_STATE`], [`KEY_REPLICAS`], [`KEY_DIGEST`], [`KEY_TRANSFER`],
//! [`KEY_REPAIR`], [`KEY_SCRUB`], [`KEY_STATS`], [`KEY_CHART`], and
//! removal markers under [`REMOVAL_PREFIX`]); a refresh task reads the
//! converged view, turns it into a [`Ring`] with the pure function
//! [`ring_from_peers`], and publishes it on a watch channel whenever its
//! digest or a member's liveness changes.
//!
//! Joining (F2): a node started with `--join` publishes no tokens until it has
//! heard from another member, so a node whose seeds are all down keeps
//! gossiping to them and never founds a cluster of its own. A node joining
//! for the first time chooses its tokens then, on the ring it finds
//! ([`allocate_tokens`], F6), has them kept, and announces them as
//! *joining*; the lifecycle task streams its ranges and turns it *normal*.
//!
//! Failure detection: chitchat's phi-accrual detector, with a floor: a
//! member is shown down only once it has also been silent for
//! [`DOWN_AFTER_SILENCE`], so a scheduling hiccup on a loaded machine does not
//! flap it.
//!
//! Cluster-wide settings (the replication factor, removals) are published
//! by whichever node issues them and re-published by every node that sees
//! them, so they outlive the node that issued them. Only a node's own keys
//! can be set in chitchat; these copies are how a setting spreads.
//!
//! # Files
//!
//! - `mod.rs`: [`Membership`], the handle the node uses: start, publish
//!   its own keys, read the ring and the view.
//! - `view.rs`: the pure view: gossip state ([`PeerState`]) in, a
//!   [`Ring`] and cluster settings out ([`ring_from_peers`] and friends).
//! - `refresh.rs`: the driver: the refresh task that holds the chitchat
//!   lock, joins (allocating and keeping tokens) and publishes rings.
//! - `merge.rs`: ring views learnt from peers over RPC.
//! - `sealed.rs`: gossip sealed with the cluster secret.
//! - `fixed.rs` (test builds only): a membership without gossip, rings
//!   from a fixed view, for unit tests of the layers above.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::watch;

#[cfg(test)]
pub mod fixed;
pub mod merge;
mod refresh;
pub mod sealed;
#[cfg(test)]
mod tests;
mod view;

use self::refresh::Refresh;
pub use self::view::{
    PeerState, Removal, ReplicaSetting, View, cluster_removals, cluster_replicas, ring_from_peers,
    tokens_hash,
};
use crate::error::{Error, Result};
use crate::ring::{Member, MemberState, NodeId, Ring, Token, allocate_tokens, encode_tokens};

/// Gossip key: the node's tokens (hex, comma separated).
pub const KEY_TOKENS: &str = "tokens";

/// Gossip key: the node's zone.
pub const KEY_ZONE: &str = "zone";

/// Gossip key: the node's lifecycle state as it announces it.
pub const KEY_STATE: &str = "state";

/// Gossip key: the cluster replication factor, see [`ReplicaSetting`].
pub const KEY_REPLICAS: &str = "replicas";

/// Gossip key: the digest of the ring as this node sees it (hex).
pub const KEY_DIGEST: &str = "digest";

/// Gossip key: this node's data transfer progress, JSON.
pub const KEY_TRANSFER: &str = "transfer";

/// Gossip key: this node's anti-entropy progress, JSON.
pub const KEY_REPAIR: &str = "repair";

/// Gossip key: this node's scrub progress, JSON.
pub const KEY_SCRUB: &str = "scrub";

/// Gossip key: what this node holds (keys, bytes, hints pending), JSON.
pub const KEY_STATS: &str = "stats";

/// Gossip key: this node's newest chart samples (JSON, a few hundred
/// bytes; `metrics::history::Summary`).
pub const KEY_CHART: &str = "chart";

/// Published key: the node's Redis protocol address (`host:port`), when it
/// serves one (`--resp-port`).
pub const KEY_RESP: &str = "resp";

/// Gossip key prefix: `remove:host:port` = `tokenhash:removing|removed`.
pub const REMOVAL_PREFIX: &str = "remove:";

/// A member is shown down only after this much silence as well as a phi
/// verdict.
pub const DOWN_AFTER_SILENCE: Duration = Duration::from_secs(2);

/// How long gossip remembers a dead member.
const DEAD_MEMBER_MEMORY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Keeps the node's tokens and whether it finished bootstrapping, before
/// they are announced; `None` forgets them (the node left).
pub type IdentitySink = Arc<dyn Fn(Option<&[Token]>, bool) -> Result<()> + Send + Sync>;

/// How membership runs on one node.
#[derive(Clone)]
pub struct MembershipOptions {
    /// This node's identity.
    pub node: NodeId,
    /// UDP address gossip listens on.
    pub listen_addr: SocketAddr,
    /// Address peers send gossip to.
    pub advertise_addr: SocketAddr,
    /// `--join` seeds as `host:port`; empty founds a new cluster.
    pub seeds: Vec<String>,
    /// This node's zone.
    pub zone: String,
    /// This node's tokens when it has them already (a restart); `None` has
    /// them chosen when it joins, by [`allocate_tokens`] on the ring it finds.
    pub tokens: Option<Vec<Token>>,
    /// Whether the kept tokens finished bootstrapping (else it resumes as
    /// joining).
    pub bootstrapped: bool,
    /// How many tokens to choose.
    pub token_count: usize,
    /// Where chosen tokens are kept (the node's data dir).
    pub keep: IdentitySink,
    /// Replication factor this node starts with (`--replicas`); a founder's
    /// value has epoch 1, a joiner's epoch 0 so that the cluster's wins.
    pub replicas: usize,
    /// Separates clusters sharing a network.
    pub cluster_id: String,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Gossip sealed with the cluster secret; `None`: plain chitchat
    /// (loopback-only clusters without a secret).
    pub sealed: Option<sealed::SealedTransport>,
}

/// Longest wait for the ring to be rebuilt after learning a view.
const LEARN_WAIT: Duration = Duration::from_millis(500);

/// A running membership: gossip plus the ring derived from it.
pub struct Membership {
    /// This node.
    node: NodeId,
    /// The chitchat server.
    handle: ChitchatHandle,
    /// The current ring; replaced on every change of digest or liveness.
    ring: watch::Receiver<Arc<Ring>>,
    /// The rest of the latest view.
    view: Arc<std::sync::Mutex<View>>,
    /// True once this node has published its tokens.
    ready: Arc<AtomicBool>,
    /// Set when this node cannot take part (its `host:port` is taken).
    fatal: watch::Receiver<Option<String>>,
    /// Keeps the node's identity.
    keep: IdentitySink,
    /// Ring views learned from other nodes over RPC (ring-version fencing),
    /// merged into what gossip says; shared with the refresh task.
    learned: Arc<std::sync::Mutex<Vec<PeerState>>>,
    /// The placement part of the last view the ring was built from.
    placement: Arc<std::sync::Mutex<Vec<PeerState>>>,
    /// Wakes the refresh task early (something was learned).
    refresh_now: Arc<tokio::sync::Notify>,
    /// Counts the refresh task's rounds, so that a caller can wait for one.
    rounds: watch::Receiver<u64>,
    /// The last ring every live member was seen to publish (see
    /// [`Membership::agreed_ring`]).
    agreed_ring: Arc<std::sync::Mutex<Arc<Ring>>>,
}

impl Membership {
    /// Starts gossip and the ring refresh task.
    pub async fn start(options: MembershipOptions) -> Result<Membership> {
        let generation = crate::version::system_time_ns();
        let chitchat_id = ChitchatId::new(
            options.node.as_str().to_string(),
            generation,
            options.advertise_addr,
        );
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: options.cluster_id.clone(),
            gossip_interval: options.gossip_interval,
            listen_addr: options.listen_addr,
            seed_nodes: options.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                initial_interval: options.gossip_interval * 4,
                // A dead member's state is kept (not garbage-collected) for
                // this long: a crashed node keeps its ranges until it is
                // removed (F8), not until chitchat forgets it (24 h by default).
                dead_node_grace_period: DEAD_MEMBER_MEMORY,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(24 * 3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let founding = options.seeds.is_empty();
        let setting = ReplicaSetting {
            n: options.replicas,
            epoch: u64::from(founding),
            from: None,
        };
        let mut initial = vec![
            (KEY_ZONE.to_string(), options.zone.clone()),
            (KEY_REPLICAS.to_string(), setting.encode()),
        ];
        let mut ready = false;
        if founding {
            let tokens = match &options.tokens {
                Some(tokens) => tokens.clone(),
                None => {
                    let empty = Ring::new(Vec::new(), options.replicas);
                    let tokens =
                        allocate_tokens(&empty, &self_member(&options), options.token_count);
                    (options.keep)(Some(&tokens), true)?;
                    tokens
                }
            };
            initial.push((KEY_TOKENS.to_string(), encode_tokens(&tokens)));
            initial.push((KEY_STATE.to_string(), MemberState::Normal.as_str().into()));
            ready = true;
        } else {
            initial.push((KEY_STATE.to_string(), MemberState::Joining.as_str().into()));
        }
        let transport: &dyn chitchat::transport::Transport = match &options.sealed {
            Some(sealed) => sealed,
            None => &UdpTransport,
        };
        let handle = spawn_chitchat(config, initial, transport)
            .await
            .map_err(|e| Error::internal(format!("gossip did not start: {e:#}")))?;
        let ready = Arc::new(AtomicBool::new(ready));
        let (tx, rx) = watch::channel(Arc::new(Ring::new(Vec::new(), options.replicas)));
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let view = Arc::new(std::sync::Mutex::new(View::default()));
        let learned = Arc::new(std::sync::Mutex::new(Vec::new()));
        let placement = Arc::new(std::sync::Mutex::new(Vec::new()));
        let refresh_now = Arc::new(tokio::sync::Notify::new());
        let (rounds_tx, rounds) = watch::channel(0);
        let agreed_ring = Arc::new(std::sync::Mutex::new(Arc::new(Ring::new(
            Vec::new(),
            options.replicas,
        ))));
        let refresh = Refresh {
            chitchat: handle.chitchat(),
            tx,
            fatal: fatal_tx,
            view: view.clone(),
            options: options.clone(),
            ready: ready.clone(),
            heard: HashMap::new(),
            learned: learned.clone(),
            placement: placement.clone(),
            refresh_now: refresh_now.clone(),
            rounds: rounds_tx,
            agreed_ring: agreed_ring.clone(),
        };
        tokio::spawn(refresh.run());
        Ok(Membership {
            node: options.node.clone(),
            handle,
            ring: rx,
            view,
            ready,
            fatal: fatal_rx,
            keep: options.keep.clone(),
            learned,
            placement,
            refresh_now,
            rounds,
            agreed_ring,
        })
    }

    /// The last ring this node saw every live member publish, with a
    /// majority of the members live: until every member is seen to have
    /// left it, writes still go to W of its replicas of a key too, since a
    /// member still on it reads from them. A node cut off from most of the
    /// cluster keeps the ring it last saw agreed.
    pub fn agreed_ring(&self) -> Arc<Ring> {
        self.agreed_ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The placement part of what this node knows of the ring (gossip and
    /// what it learned), to send a node whose ring differs.
    pub fn ring_view(&self) -> Vec<PeerState> {
        self.placement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Merges a ring view another node sent into what this node knows, and
    /// waits (briefly) until the ring is rebuilt from it. A node whose
    /// gossip is cut off still learns this way, from the replicas it talks
    /// to.
    pub async fn learn(&self, view: Vec<PeerState>) {
        {
            let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
            let merged = merge::merge(&learned, &view);
            *learned = merged;
            let excess = learned.len().saturating_sub(merge::MAX_VIEW_PEERS);
            learned.drain(..excess);
        }
        let mut rounds = self.rounds.clone();
        let seen = *rounds.borrow_and_update();
        self.refresh_now.notify_one();
        let _ = tokio::time::timeout(LEARN_WAIT, rounds.wait_for(|round| *round > seen)).await;
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.borrow().clone()
    }

    /// A receiver of every new ring.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Ring>> {
        self.ring.clone()
    }

    /// The latest view beyond the ring.
    pub fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this node has joined (published its tokens).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Resolves with a reason when this node cannot take part at all.
    pub async fn fatal(&self) -> String {
        let mut fatal = self.fatal.clone();
        loop {
            if let Some(reason) = fatal.borrow_and_update().clone() {
                return reason;
            }
            if fatal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// This node's state as it announces it.
    pub async fn own_state(&self) -> MemberState {
        let chitchat = self.handle.chitchat();
        let mut guard = chitchat.lock().await;
        guard
            .self_node_state()
            .get(KEY_STATE)
            .and_then(MemberState::parse)
            .unwrap_or(MemberState::Joining)
    }

    /// Sets one of this node's gossip keys.
    async fn publish(&self, key: &str, value: String) {
        let chitchat = self.handle.chitchat();
        chitchat.lock().await.self_node_state().set(key, value);
    }

    /// Announces this node's state.
    pub async fn set_state(&self, state: MemberState) {
        self.publish(KEY_STATE, state.as_str().to_string()).await;
        tracing::info!(node = %self.node, state = state.as_str(), "announced");
    }

    /// Keeps whether this node finished bootstrapping its tokens; `None`
    /// forgets the tokens (the node left and would rejoin as new).
    pub fn keep_identity(&self, tokens: Option<&[Token]>, bootstrapped: bool) -> Result<()> {
        (self.keep)(tokens, bootstrapped)
    }

    /// Publishes this node's transfer progress.
    pub async fn set_transfer(&self, json: String) {
        self.publish(KEY_TRANSFER, json).await;
    }

    /// Publishes this node's anti-entropy progress.
    pub async fn set_repair(&self, json: String) {
        self.publish(KEY_REPAIR, json).await;
    }

    /// Publishes this node's scrub progress.
    pub async fn set_scrub(&self, json: String) {
        self.publish(KEY_SCRUB, json).await;
    }

    /// Publishes this node's Redis protocol address (`host:port`).
    pub async fn set_resp(&self, addr: String) {
        self.publish(KEY_RESP, addr).await;
    }

    /// Publishes what this node holds (keys, bytes, hints pending).
    pub async fn set_stats(&self, json: String) {
        self.publish(KEY_STATS, json).await;
    }

    /// Publishes this node's newest chart samples.
    pub async fn set_chart(&self, json: String) {
        self.publish(KEY_CHART, json).await;
    }

    /// Publishes a removal of `node` (whose tokens hash to `tokens_hash`).
    pub async fn publish_removal(&self, node: &NodeId, removal: Removal) {
        self.publish(&format!("{REMOVAL_PREFIX}{node}"), removal.encode())
            .await;
    }

    /// Publishes a new replication setting.
    pub async fn publish_replicas(&self, setting: ReplicaSetting) {
        self.publish(KEY_REPLICAS, setting.encode()).await;
    }

    /// The winning replication setting as of now.
    pub async fn replica_setting(&self) -> ReplicaSetting {
        let chitchat = self.handle.chitchat();
        let mut guard = chitchat.lock().await;
        let own = guard
            .self_node_state()
            .get(KEY_REPLICAS)
            .and_then(ReplicaSetting::parse);
        own.unwrap_or(ReplicaSetting {
            n: self.ring().replicas(),
            epoch: 0,
            from: None,
        })
    }

    /// The members believed up, other than this node, that publish the
    /// digest of another ring than `ring` (their gossip lags, or this
    /// node's does).
    pub fn lagging(&self, ring: &Ring) -> Vec<NodeId> {
        let want = format!("{:016x}", ring.digest());
        let view = self.view();
        ring.members()
            .filter(|m| m.live && m.state != MemberState::Removed && m.id != self.node)
            .filter(|m| view.digests.get(&m.id) != Some(&want))
            .map(|m| m.id.clone())
            .collect()
    }

    /// The cluster's replication setting as last gossiped (that of `ring`
    /// when none was seen yet).
    pub fn replica_setting_seen(&self, ring: &Ring) -> ReplicaSetting {
        self.view().replicas.unwrap_or(ReplicaSetting {
            n: ring.target_replicas(),
            epoch: 0,
            from: None,
        })
    }

    /// Whether every live member publishes the digest of this node's ring.
    pub fn agreed(&self) -> bool {
        let ring = self.ring();
        let want = format!("{:016x}", ring.digest());
        let view = self.view();
        ring.members()
            .filter(|m| m.live && m.state != MemberState::Removed)
            .all(|m| view.digests.get(&m.id) == Some(&want))
    }

    /// Stops gossiping.
    pub fn shutdown(&self) {
        if let Err(err) = self.handle.initiate_shutdown() {
            tracing::debug!(%err, "gossip shutdown");
        }
    }
}

/// This node as a ring member, without tokens.
fn self_member(options: &MembershipOptions) -> Member {
    Member {
        id: options.node.clone(),
        zone: options.zone.clone(),
        state: MemberState::Joining,
        live: true,
        tokens: Vec::new(),
    }
}
