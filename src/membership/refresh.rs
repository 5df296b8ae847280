//! The membership driver: the refresh task. Every
//! [`REFRESH_INTERVAL_MS`] (or when woken by something learnt) it takes
//! the chitchat lock to read the peers' states, judge liveness (chitchat's
//! detector with the [`DOWN_AFTER_SILENCE`] floor) and re-publish the
//! cluster's settings; joins once another member is heard from (choosing
//! tokens with `allocate_tokens` and keeping them before they are
//! published); builds the ring with the pure view (`view.rs`) and sends it
//! on the watch channel when its digest or a member's liveness changes.
//!
//! Invariants: the chitchat lock (shared with the gossip server) is held
//! only for synchronous reads and writes of the state, never across
//! another await: token allocation and keeping happen before it is taken,
//! so a restart announces the tokens it kept. Does not decide placement
//! (`ring/`) nor what a peer's keys mean (`view.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chitchat::ChitchatId;
use tokio::sync::{Mutex, watch};

use super::view::{member_changes, newest_instances};
use super::*;
use crate::ring::{Member, MemberState, Ring, Token, allocate_tokens};

/// How often the ring is rebuilt from the gossip state.
const REFRESH_INTERVAL_MS: u64 = 100;

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
        .map_err(|e| Error::internal(format!("token allocation failed: {e}")))?;
    (options.keep)(Some(&tokens), false)?;
    Ok(Some(tokens))
}

/// The refresh task: gossip state in, rings out.
pub(super) struct Refresh {
    pub(super) chitchat: Arc<Mutex<chitchat::Chitchat>>,
    pub(super) tx: watch::Sender<Arc<Ring>>,
    pub(super) fatal: watch::Sender<Option<String>>,
    pub(super) view: Arc<std::sync::Mutex<View>>,
    pub(super) options: MembershipOptions,
    pub(super) ready: Arc<AtomicBool>,
    /// Each instance's last heartbeat and when it changed.
    pub(super) heard: HashMap<ChitchatId, (u64, Instant)>,
    /// Views learned over RPC (see [`Membership::learn`]).
    pub(super) learned: Arc<std::sync::Mutex<Vec<PeerState>>>,
    /// Where the placement view of each round is kept.
    pub(super) placement: Arc<std::sync::Mutex<Vec<PeerState>>>,
    /// Wakes a round early.
    pub(super) refresh_now: Arc<tokio::sync::Notify>,
    /// Counts rounds.
    pub(super) rounds: watch::Sender<u64>,
    /// Where the last agreed ring is kept.
    pub(super) agreed_ring: Arc<std::sync::Mutex<Arc<Ring>>>,
}

impl Refresh {
    pub(super) async fn run(mut self) {
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
