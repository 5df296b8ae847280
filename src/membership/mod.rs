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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::{Mutex, watch};

pub mod merge;
pub mod sealed;

use crate::error::{Error, Result};
use crate::ring::{
    Member, MemberState, NodeId, Ring, Token, allocate_tokens, decode_tokens, encode_tokens,
};

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

/// How often the ring is rebuilt from the gossip state.
const REFRESH_INTERVAL_MS: u64 = 100;
/// Longest wait for the ring to be rebuilt after learning a view.
const LEARN_WAIT: Duration = Duration::from_millis(500);

/// What gossip says about one peer, the input of [`ring_from_peers`].
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    /// The peer's `host:port`.
    pub node: String,
    /// Incremented on every restart of the peer.
    pub generation: u64,
    /// The peer's gossip version (it grows with every change of its keys):
    /// of two copies of one instance, the higher is newer.
    pub version: u64,
    /// Whether the failure detector believes it is up.
    pub live: bool,
    /// The keys it published.
    pub keys: HashMap<String, String>,
}

/// The cluster's replication factor: `n` copies, or moving from `from` to
/// `n` copies while data is copied (F10). Wire form `n:epoch` when settled,
/// `n:epoch:from` while moving; the highest epoch wins, settled over moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSetting {
    /// Copies once settled.
    pub n: usize,
    /// Incremented by every change.
    pub epoch: u64,
    /// Copies serving reads while moving.
    pub from: Option<usize>,
}

impl ReplicaSetting {
    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<ReplicaSetting> {
        let mut parts = s.split(':');
        let n: usize = parts.next()?.parse().ok()?;
        let epoch: u64 = parts.next()?.parse().ok()?;
        let from = match parts.next() {
            Some(f) => Some(f.parse::<usize>().ok().filter(|f| *f >= 1)?),
            None => None,
        };
        (n >= 1 && parts.next().is_none()).then_some(ReplicaSetting { n, epoch, from })
    }

    /// The wire form.
    pub fn encode(&self) -> String {
        match self.from {
            Some(from) => format!("{}:{}:{from}", self.n, self.epoch),
            None => format!("{}:{}", self.n, self.epoch),
        }
    }

    fn rank(&self) -> (u64, bool) {
        (self.epoch, self.from.is_none())
    }

    /// Copies serving reads now.
    pub fn current(&self) -> usize {
        self.from.unwrap_or(self.n)
    }
}

/// A removal in progress or done, as published under [`REMOVAL_PREFIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Hash of the removed member's tokens: a node rejoining under the
    /// same `host:port` with new tokens is a new member.
    pub tokens_hash: u64,
    /// True once its ranges were re-replicated.
    pub done: bool,
}

impl Removal {
    fn parse(s: &str) -> Option<Removal> {
        let (hash, phase) = s.split_once(':')?;
        let tokens_hash = u64::from_str_radix(hash, 16).ok()?;
        let done = match phase {
            "removing" => false,
            "removed" => true,
            _ => return None,
        };
        Some(Removal { tokens_hash, done })
    }

    fn encode(&self) -> String {
        let phase = if self.done { "removed" } else { "removing" };
        format!("{:016x}:{phase}", self.tokens_hash)
    }
}

/// The hash removal markers name a member's tokens by.
pub fn tokens_hash(tokens: &[Token]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(encode_tokens(tokens).as_bytes())
}

/// The instance of each node to believe: with tokens before without (a
/// restarted member owns its ranges until it has announced its tokens
/// again, and a newcomer wrongly using a member's `host:port` does not hide
/// it), then up before down, then the newest generation.
fn newest_instances(peers: &[PeerState]) -> BTreeMap<&str, &PeerState> {
    let rank = |p: &PeerState| (p.keys.contains_key(KEY_TOKENS), p.live, p.generation);
    let mut newest: BTreeMap<&str, &PeerState> = BTreeMap::new();
    for peer in peers {
        let entry = newest.entry(peer.node.as_str()).or_insert(peer);
        if rank(peer) > rank(entry) {
            *entry = peer;
        }
    }
    newest
}

/// Every removal any peer published, the furthest along per node.
pub fn cluster_removals(peers: &[PeerState]) -> BTreeMap<String, Removal> {
    let mut out: BTreeMap<String, Removal> = BTreeMap::new();
    for peer in peers {
        for (key, value) in &peer.keys {
            let Some(node) = key.strip_prefix(REMOVAL_PREFIX) else {
                continue;
            };
            let Some(removal) = Removal::parse(value) else {
                continue;
            };
            let entry = out.entry(node.to_string()).or_insert(removal);
            if removal.tokens_hash == entry.tokens_hash && removal.done {
                entry.done = true;
            }
        }
    }
    out
}

/// Builds the ring from gossip state: pure, so it is tested without a network.
/// Peers without tokens own nothing yet.
pub fn ring_from_peers(peers: &[PeerState], fallback_replicas: usize) -> Ring {
    let removals = cluster_removals(peers);
    let mut members = Vec::new();
    for peer in newest_instances(peers).values() {
        let Ok(id) = NodeId::parse(&peer.node) else {
            continue;
        };
        let Some(tokens) = peer.keys.get(KEY_TOKENS) else {
            continue;
        };
        let Ok(tokens) = decode_tokens(tokens) else {
            tracing::warn!(peer = %peer.node, "ignoring a peer with malformed tokens");
            continue;
        };
        let mut state = peer
            .keys
            .get(KEY_STATE)
            .and_then(|s| MemberState::parse(s))
            .filter(|s| *s != MemberState::Down)
            .unwrap_or(MemberState::Normal);
        if let Some(removal) = removals.get(&peer.node)
            && removal.tokens_hash == tokens_hash(&tokens)
        {
            // A member being removed hands its ranges over (leaving) unless
            // it owned none yet: a joiner is gone at once.
            state = if removal.done || matches!(state, MemberState::Removed | MemberState::Joining)
            {
                MemberState::Removed
            } else {
                MemberState::Leaving
            };
        }
        members.push(Member {
            id,
            zone: peer.keys.get(KEY_ZONE).cloned().unwrap_or_default(),
            state,
            live: peer.live,
            tokens,
        });
    }
    let setting = cluster_replicas(peers).unwrap_or(ReplicaSetting {
        n: fallback_replicas,
        epoch: 0,
        from: None,
    });
    Ring::changing(members, setting.current(), setting.n)
}

/// The winning replication setting gossiped by any peer.
pub fn cluster_replicas(peers: &[PeerState]) -> Option<ReplicaSetting> {
    peers
        .iter()
        .filter_map(|p| p.keys.get(KEY_REPLICAS))
        .filter_map(|s| ReplicaSetting::parse(s))
        .max_by_key(|s| (s.rank(), s.n))
}

/// What the refresh task last saw, beyond the ring.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Each member's published ring digest.
    pub digests: BTreeMap<NodeId, String>,
    /// Each member's published transfer progress (JSON).
    pub transfers: BTreeMap<NodeId, String>,
    /// Each member's published anti-entropy progress (JSON).
    pub repairs: BTreeMap<NodeId, String>,
    /// Each member's published scrub progress (JSON).
    pub scrubs: BTreeMap<NodeId, String>,
    /// Each member's published figures: keys, bytes, hints (JSON).
    pub stats: BTreeMap<NodeId, String>,
    /// Each member's Redis protocol address, for those that serve one.
    pub resp: BTreeMap<NodeId, String>,
    /// Each member's newest chart samples (JSON).
    pub charts: BTreeMap<NodeId, String>,
    /// When each member that is down was last heard from.
    pub down_since: BTreeMap<NodeId, Instant>,
    /// The winning replication setting gossiped.
    pub replicas: Option<ReplicaSetting>,
}

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
            .map_err(|e| Error::Io(std::io::Error::other(format!("gossip: {e:#}"))))?;
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

/// The tokens to join with: the kept ones, or new ones chosen on the ring the
/// other members form (once their tokens have arrived) and kept first.
async fn join_tokens(
    options: &MembershipOptions,
    others: &[PeerState],
) -> Result<Option<Vec<Token>>> {
    if let Some(tokens) = &options.tokens {
        return Ok(Some(tokens.clone()));
    }
    let ring = ring_from_peers(others, options.replicas);
    if ring.nodes_of(b"").is_empty() {
        return Ok(None); // the members' tokens have not arrived yet
    }
    let (me, count) = (self_member(options), options.token_count);
    let tokens = tokio::task::spawn_blocking(move || allocate_tokens(&ring, &me, count))
        .await
        .map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "token allocation failed: {e}"
            )))
        })?;
    (options.keep)(Some(&tokens), false)?;
    Ok(Some(tokens))
}

/// The refresh task: gossip state in, rings out.
struct Refresh {
    chitchat: Arc<Mutex<chitchat::Chitchat>>,
    tx: watch::Sender<Arc<Ring>>,
    fatal: watch::Sender<Option<String>>,
    view: Arc<std::sync::Mutex<View>>,
    options: MembershipOptions,
    ready: Arc<AtomicBool>,
    /// Each instance's last heartbeat and when it changed.
    heard: HashMap<ChitchatId, (u64, Instant)>,
    /// Views learned over RPC (see [`Membership::learn`]).
    learned: Arc<std::sync::Mutex<Vec<PeerState>>>,
    /// Where the placement view of each round is kept.
    placement: Arc<std::sync::Mutex<Vec<PeerState>>>,
    /// Wakes a round early.
    refresh_now: Arc<tokio::sync::Notify>,
    /// Counts rounds.
    rounds: watch::Sender<u64>,
    /// Where the last agreed ring is kept.
    agreed_ring: Arc<std::sync::Mutex<Arc<Ring>>>,
}

impl Refresh {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(REFRESH_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_wait_log = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.refresh_now.notified() => {}
            }
            if self.tx.is_closed() {
                return;
            }
            let peers = self.adopt_and_read().await;
            if !self.ready.load(Ordering::Acquire) {
                let others: Vec<PeerState> = peers
                    .iter()
                    .filter(|p| p.node != self.options.node.as_str())
                    .cloned()
                    .collect();
                if let Some(reason) = self.conflict(&peers) {
                    let _ = self.fatal.send(Some(reason));
                    return;
                }
                if others.iter().any(|p| p.live) {
                    self.join(&others).await;
                } else if last_wait_log.elapsed() > Duration::from_secs(5) {
                    last_wait_log = Instant::now();
                    tracing::warn!(seeds = ?self.options.seeds, "no seed answers yet; still trying");
                }
            }
            self.publish(&peers).await;
            self.rounds.send_modify(|round| *round += 1);
        }
    }

    /// Reads the gossip state; adopts the cluster's newer settings.
    async fn adopt_and_read(&mut self) -> Vec<PeerState> {
        let mut guard = self.chitchat.lock().await;
        let live: HashSet<ChitchatId> = guard.live_nodes().cloned().collect();
        let now = Instant::now();
        let mut peers = Vec::new();
        for (id, state) in guard.node_states() {
            let beat = u64::from(state.heartbeat());
            let heard = self.heard.entry(id.clone()).or_insert((beat, now));
            if heard.0 != beat {
                *heard = (beat, now);
            }
            let silent = now.duration_since(heard.1) >= DOWN_AFTER_SILENCE;
            let is_self = &*id.node_id == self.options.node.as_str();
            peers.push(PeerState {
                node: id.node_id.to_string(),
                generation: id.generation_id,
                version: state.max_version(),
                live: is_self || live.contains(id) || !silent,
                keys: state
                    .key_values()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
        self.heard
            .retain(|id, _| guard.node_states().contains_key(id));
        let me = guard.self_node_state();
        if let Some(setting) = cluster_replicas(&peers) {
            let own = me.get(KEY_REPLICAS).and_then(ReplicaSetting::parse);
            if own != Some(setting) {
                me.set(KEY_REPLICAS, setting.encode());
            }
        }
        for (node, removal) in cluster_removals(&peers) {
            let key = format!("{REMOVAL_PREFIX}{node}");
            if me.get(&key).and_then(Removal::parse) != Some(removal) {
                me.set(key, removal.encode());
            }
        }
        peers
    }

    /// Why this node cannot join: another live member has its `host:port`
    /// while this node is new.
    fn conflict(&self, peers: &[PeerState]) -> Option<String> {
        if self.options.tokens.is_some() {
            return None; // a restart: the old instance fades away
        }
        let me = self.options.node.as_str();
        let own_generation = peers
            .iter()
            .filter(|p| p.node == me)
            .map(|p| p.generation)
            .max()?;
        peers
            .iter()
            .find(|p| {
                p.node == me
                    && p.generation != own_generation
                    && p.live
                    && p.keys.contains_key(KEY_TOKENS)
            })
            .map(|_| {
                format!(
                    "another live member already uses {me}; give this node another --host/--port \
                     (or a data dir that belongs to {me})"
                )
            })
    }

    async fn join(&mut self, others: &[PeerState]) {
        match join_tokens(&self.options, others).await {
            Ok(Some(tokens)) => {
                let state = if self.options.tokens.is_some() && self.options.bootstrapped {
                    MemberState::Normal
                } else {
                    MemberState::Joining
                };
                let mut guard = self.chitchat.lock().await;
                let me = guard.self_node_state();
                me.set(KEY_TOKENS, encode_tokens(&tokens));
                me.set(KEY_STATE, state.as_str());
                self.ready.store(true, Ordering::Release);
                tracing::info!(
                    node = %self.options.node,
                    tokens = tokens.len(),
                    state = state.as_str(),
                    "joined the cluster"
                );
            }
            Ok(None) => {}
            Err(err) => tracing::error!(%err, "cannot keep the chosen tokens; not joining yet"),
        }
    }

    /// Builds the ring from gossip and what was learned over RPC;
    /// publishes it, its digest and the view.
    async fn publish(&mut self, peers: &[PeerState]) {
        let placement = {
            let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
            merge::prune(&mut learned, peers);
            let mut placement = merge::merge(&merge::placement_only(peers), &learned);
            // Whether a member is up is this node's failure detector's
            // call wherever gossip knows the instance; a learned view says
            // so only of instances gossip has not brought (a node cannot
            // vouch for itself or others to a node that sees them silent).
            for peer in &mut placement {
                if let Some(known) = peers
                    .iter()
                    .find(|g| g.node == peer.node && g.generation == peer.generation)
                {
                    peer.live = known.live;
                }
            }
            placement
        };
        let ring = ring_from_peers(&placement, self.options.replicas);
        *self.placement.lock().unwrap_or_else(|p| p.into_inner()) = placement;
        let digest = format!("{:016x}", ring.digest());
        let mut view = View {
            replicas: cluster_replicas(peers),
            ..View::default()
        };
        for (node, peer) in newest_instances(peers) {
            let Ok(id) = NodeId::parse(node) else {
                continue;
            };
            if let Some(d) = peer.keys.get(KEY_DIGEST) {
                view.digests.insert(id.clone(), d.clone());
            }
            if let Some(t) = peer.keys.get(KEY_TRANSFER) {
                view.transfers.insert(id.clone(), t.clone());
            }
            if let Some(r) = peer.keys.get(KEY_REPAIR) {
                view.repairs.insert(id.clone(), r.clone());
            }
            if let Some(s) = peer.keys.get(KEY_SCRUB) {
                view.scrubs.insert(id.clone(), s.clone());
            }
            if let Some(r) = peer.keys.get(KEY_RESP) {
                view.resp.insert(id.clone(), r.clone());
            }
            if let Some(c) = peer.keys.get(KEY_CHART) {
                view.charts.insert(id.clone(), c.clone());
            }
            if let Some(s) = peer.keys.get(KEY_STATS) {
                view.stats.insert(id, s.clone());
            }
        }
        {
            let mut shared = self.view.lock().unwrap_or_else(|p| p.into_inner());
            view.down_since = std::mem::take(&mut shared.down_since);
            let now = Instant::now();
            view.down_since
                .retain(|id, _| ring.member(id).is_some_and(|m| !m.live));
            for m in ring.members().filter(|m| !m.live) {
                view.down_since.entry(m.id.clone()).or_insert(now);
            }
            *shared = view;
        }
        if self.ready.load(Ordering::Acquire) {
            let mut guard = self.chitchat.lock().await;
            let me = guard.self_node_state();
            if me.get(KEY_DIGEST) != Some(digest.as_str()) {
                me.set(KEY_DIGEST, &digest);
            }
        }
        self.keep_if_agreed(&ring);
        let current = self.tx.borrow().clone();
        let liveness_changed = ring
            .members()
            .any(|m| current.member(&m.id).is_none_or(|c| c.live != m.live));
        if ring.digest() != current.digest() || liveness_changed {
            // One line per member whose state changed, naming it (F5).
            for change in member_changes(&current, &ring) {
                let from = change.from.map(|s| s.as_str());
                match change.to {
                    MemberState::Down => tracing::warn!(
                        peer = %change.node,
                        from,
                        "member down: the failure detector suspects it"
                    ),
                    to => tracing::info!(
                        peer = %change.node,
                        from,
                        to = to.as_str(),
                        "{}",
                        change.describe()
                    ),
                }
            }
            if ring.digest() != current.digest() {
                tracing::info!(
                    digest = %digest,
                    members = ring.members().count(),
                    replicas = ring.replicas(),
                    target_replicas = ring.target_replicas(),
                    transition = ring.in_transition(),
                    "ring changed"
                );
            }
            let _ = self.tx.send(Arc::new(ring));
        }
    }
}

impl Refresh {
    /// Keeps `ring` as the agreed ring when every live member publishes
    /// its digest and the live members are a majority of the members (a
    /// node that hears from few members cannot know what the others see).
    fn keep_if_agreed(&self, ring: &Ring) {
        let digest = format!("{:016x}", ring.digest());
        let me = &self.options.node;
        let digests = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .digests
            .clone();
        let members: Vec<&Member> = ring
            .members()
            .filter(|m| m.state != MemberState::Removed)
            .collect();
        let live = members.iter().filter(|m| m.live || m.id == *me).count();
        let all_see_it = members
            .iter()
            .filter(|m| m.live && m.id != *me)
            .all(|m| digests.get(&m.id) == Some(&digest));
        if !(all_see_it && live * 2 > members.len()) {
            return;
        }
        let mut agreed = self.agreed_ring.lock().unwrap_or_else(|p| p.into_inner());
        if agreed.digest() != ring.digest() || agreed.members().count() != ring.members().count() {
            *agreed = Arc::new(ring.clone());
        }
    }
}

/// A member whose shown state (F7: joining, normal, leaving, down,
/// removed) differs between two rings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemberChange {
    /// The member.
    node: NodeId,
    /// Its state before; `None`: it was not a member.
    from: Option<MemberState>,
    /// Its state now.
    to: MemberState,
}

impl MemberChange {
    /// The log message: what happened to the member.
    fn describe(&self) -> &'static str {
        match (self.from, self.to) {
            (None, MemberState::Joining) => "member joined: streaming its ranges",
            (None, _) => "member found",
            (Some(MemberState::Down), MemberState::Removed) => "member removed",
            (Some(MemberState::Down), _) => "member up again",
            (_, MemberState::Joining) => "member joining",
            (Some(MemberState::Joining), MemberState::Normal) => "member joined: now normal",
            (_, MemberState::Normal) => "member normal",
            (_, MemberState::Leaving) => "member leaving: handing its ranges over",
            (_, MemberState::Removed) => "member left",
            (_, MemberState::Down) => "member down",
        }
    }
}

/// How each member's shown state changed from `old` to `new`.
fn member_changes(old: &Ring, new: &Ring) -> Vec<MemberChange> {
    new.members()
        .filter_map(|m| {
            let from = old.member(&m.id).map(|o| o.shown_state());
            let to = m.shown_state();
            (from != Some(to)).then(|| MemberChange {
                node: m.id.clone(),
                from,
                to,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_changes_name_the_member_and_its_states() {
        let a = peer("a:1", 1, true, &[(KEY_TOKENS, "1"), (KEY_STATE, "normal")]);
        let b = |live, state: &str| peer("b:1", 1, live, &[(KEY_TOKENS, "2"), (KEY_STATE, state)]);
        let ring = |peers: Vec<PeerState>| ring_from_peers(&peers, 3);
        let alone = ring(vec![a.clone()]);
        let joining = ring(vec![a.clone(), b(true, "joining")]);
        let normal = ring(vec![a.clone(), b(true, "normal")]);
        let down = ring(vec![a.clone(), b(false, "normal")]);
        let change = |from: &Ring, to: &Ring| {
            let changes = member_changes(from, to);
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert_eq!(changes[0].node.as_str(), "b:1");
            changes[0].describe()
        };
        assert_eq!(
            change(&alone, &joining),
            "member joined: streaming its ranges"
        );
        assert_eq!(change(&joining, &normal), "member joined: now normal");
        assert_eq!(change(&normal, &down), "member down");
        assert_eq!(change(&down, &normal), "member up again");
        assert!(member_changes(&normal, &normal).is_empty());
    }

    fn peer(node: &str, generation: u64, live: bool, keys: &[(&str, &str)]) -> PeerState {
        PeerState {
            node: node.into(),
            generation,
            version: 1,
            live,
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn ring_from_gossip_state() {
        let peers = vec![
            peer(
                "a:1",
                1,
                true,
                &[
                    (KEY_TOKENS, "1,5"),
                    (KEY_STATE, "normal"),
                    (KEY_REPLICAS, "3:1"),
                ],
            ),
            peer("b:1", 1, false, &[(KEY_TOKENS, "2"), (KEY_STATE, "normal")]),
            peer("c:1", 1, true, &[(KEY_STATE, "joining")]),
            peer("d:1", 1, true, &[(KEY_TOKENS, "zz")]),
            peer("bad", 1, true, &[(KEY_TOKENS, "7")]),
        ];
        let ring = ring_from_peers(&peers, 2);
        assert_eq!(ring.replicas(), 3);
        let states: Vec<_> = ring
            .members()
            .map(|m| (m.id.to_string(), m.shown_state()))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a:1".to_string(), MemberState::Normal),
                ("b:1".to_string(), MemberState::Down)
            ]
        );
    }

    #[test]
    fn newest_generation_of_a_node_wins() {
        let peers = vec![
            peer("a:1", 1, false, &[(KEY_TOKENS, "1")]),
            peer("a:1", 2, true, &[(KEY_TOKENS, "9")]),
        ];
        let ring = ring_from_peers(&peers, 3);
        let a = ring.members().next().unwrap();
        assert_eq!(a.state, MemberState::Normal);
        assert_eq!(a.tokens, vec![Token(9)]);
    }

    #[test]
    fn highest_replication_epoch_wins() {
        let peers = vec![
            peer("a:1", 1, true, &[(KEY_REPLICAS, "3:1")]),
            peer("b:1", 1, true, &[(KEY_REPLICAS, "5:2")]),
            peer("c:1", 1, true, &[(KEY_REPLICAS, "4:0")]),
            peer("d:1", 1, true, &[(KEY_REPLICAS, "0:9")]),
            peer("e:1", 1, true, &[(KEY_REPLICAS, "junk")]),
        ];
        let setting = cluster_replicas(&peers).unwrap();
        assert_eq!((setting.n, setting.epoch, setting.from), (5, 2, None));
    }

    #[test]
    fn a_settled_replication_change_beats_the_same_epoch_moving() {
        let peers = vec![
            peer("a:1", 1, true, &[(KEY_REPLICAS, "5:2:3")]),
            peer("b:1", 1, true, &[(KEY_REPLICAS, "5:2")]),
            peer("c:1", 1, true, &[(KEY_REPLICAS, "3:1")]),
        ];
        assert_eq!(cluster_replicas(&peers).unwrap().from, None);
        let moving = vec![peer(
            "a:1",
            1,
            true,
            &[(KEY_TOKENS, "1"), (KEY_REPLICAS, "5:2:3")],
        )];
        let ring = ring_from_peers(&moving, 3);
        assert_eq!((ring.replicas(), ring.target_replicas()), (3, 5));
        for bad in ["0:1", "3", "3:x", "3:1:0", "3:1:2:4"] {
            assert_eq!(ReplicaSetting::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn removal_markers_apply_to_the_tokens_they_name() {
        let hash = format!("{:016x}", tokens_hash(&[Token(2)]));
        let removing = format!("{hash}:removing");
        let removed = format!("{hash}:removed");
        let base = |marker: &str| {
            vec![
                peer("a:1", 1, true, &[(KEY_TOKENS, "1"), ("remove:b:1", marker)]),
                peer("b:1", 1, false, &[(KEY_TOKENS, "2"), (KEY_STATE, "normal")]),
                peer("c:1", 1, true, &[(KEY_TOKENS, "3"), ("remove:c:1", marker)]),
            ]
        };
        let state_of = |peers: &[PeerState], node: &str| {
            ring_from_peers(peers, 3)
                .members()
                .find(|m| m.id.as_str() == node)
                .map(|m| m.state)
        };
        assert_eq!(
            state_of(&base(&removing), "b:1"),
            Some(MemberState::Leaving)
        );
        assert_eq!(state_of(&base(&removed), "b:1"), Some(MemberState::Removed));
        // A joiner being removed owned nothing yet: it is removed at once.
        let mut joiner = base(&removing);
        joiner[1] = peer(
            "b:1",
            1,
            false,
            &[(KEY_TOKENS, "2"), (KEY_STATE, "joining")],
        );
        assert_eq!(state_of(&joiner, "b:1"), Some(MemberState::Removed));
        // The marker names b's tokens, not c's: c stays.
        assert_eq!(state_of(&base(&removed), "c:1"), Some(MemberState::Normal));
        // A later "removed" from another node completes a "removing".
        let mut mixed = base(&removing);
        mixed.push(peer("d:1", 1, true, &[("remove:b:1", removed.as_str())]));
        assert_eq!(state_of(&mixed, "b:1"), Some(MemberState::Removed));
    }

    #[test]
    fn a_restarted_member_keeps_its_ranges_until_it_announces_its_tokens() {
        // Killed, restarted: the new instance is up but has not announced
        // its tokens yet; the old one, down, still owns the ranges.
        let peers = vec![
            peer("a:1", 1, false, &[(KEY_TOKENS, "1"), (KEY_STATE, "normal")]),
            peer("a:1", 2, true, &[(KEY_STATE, "joining")]),
        ];
        let ring = ring_from_peers(&peers, 3);
        let a = ring.members().next().expect("a member");
        assert_eq!(
            (a.tokens.clone(), a.state),
            (vec![Token(1)], MemberState::Normal)
        );
    }

    #[test]
    fn a_newcomer_reusing_a_members_address_does_not_hide_it() {
        let peers = vec![
            peer("a:1", 1, true, &[(KEY_TOKENS, "1"), (KEY_STATE, "normal")]),
            peer("a:1", 2, true, &[(KEY_STATE, "joining")]),
        ];
        let ring = ring_from_peers(&peers, 3);
        assert_eq!(ring.members().next().unwrap().tokens, vec![Token(1)]);
    }
}
