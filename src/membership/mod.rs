//! Cluster membership over gossip (F7), backed by chitchat (Scuttlebutt
//! anti-entropy gossip with phi-accrual failure detection) on UDP, on the
//! same port number as the node's TCP port (F1).
//!
//! Each node publishes a few keys about itself ([`KEY_TOKENS`], [`KEY_ZONE`],
//! [`KEY_STATE`], [`KEY_REPLICAS`]); a refresh task reads the converged view,
//! turns it into a [`Ring`] with the pure function [`ring_from_peers`], and
//! publishes the ring on a watch channel whenever its digest changes.
//!
//! Joining (F2): a node started with `--join` publishes no tokens until it has
//! heard from another member, so a node whose seeds are all down keeps
//! gossiping to them and never founds a cluster of its own. A node joining
//! for the first time chooses its tokens then, on the ring it finds
//! ([`allocate_tokens`], F6), and has them kept before announcing them.
//!
//! The replication factor N is a cluster-wide setting carried as
//! `N:epoch`; every node adopts the highest epoch it sees, so a later change
//! (F10) spreads the same way.
//!
//! Not done here: bootstrap streaming, leave, removal and hints (the
//! membership-lifecycle issue), and authenticated gossip (F27).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::watch;

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
/// Gossip key: the cluster replication factor as `N:epoch`.
pub const KEY_REPLICAS: &str = "replicas";

/// Persists a node's tokens once chosen, before they are announced.
pub type TokenSink = Arc<dyn Fn(&[Token]) -> Result<()> + Send + Sync>;

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
    /// How many tokens to choose.
    pub token_count: usize,
    /// Where chosen tokens are kept (the node's data dir).
    pub keep_tokens: TokenSink,
    /// Replication factor this node starts with (`--replicas`); a founder's
    /// value has epoch 1, a joiner's epoch 0 so that the cluster's wins.
    pub replicas: usize,
    /// Separates clusters sharing a network.
    pub cluster_id: String,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
}

/// How often the ring is rebuilt from the gossip state.
const REFRESH_INTERVAL_MS: u64 = 100;

/// What gossip says about one peer, the input of [`ring_from_peers`].
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    /// The peer's `host:port`.
    pub node: String,
    /// Incremented on every restart of the peer.
    pub generation: u64,
    /// Whether the failure detector believes it is up.
    pub live: bool,
    /// The keys it published.
    pub keys: HashMap<String, String>,
}

/// Builds the ring from gossip state: pure, so it is tested without a network.
/// Peers without tokens own nothing yet; the newest generation of a node wins.
pub fn ring_from_peers(peers: &[PeerState], fallback_replicas: usize) -> Ring {
    let mut newest: BTreeMap<&str, &PeerState> = BTreeMap::new();
    for peer in peers {
        let entry = newest.entry(peer.node.as_str()).or_insert(peer);
        if peer.generation > entry.generation {
            *entry = peer;
        }
    }
    let mut members = Vec::new();
    for peer in newest.values() {
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
        let announced = peer
            .keys
            .get(KEY_STATE)
            .and_then(|s| MemberState::parse(s))
            .unwrap_or(MemberState::Normal);
        let state = match (peer.live, announced) {
            (_, MemberState::Removed) => MemberState::Removed,
            (false, _) => MemberState::Down,
            (true, s) => s,
        };
        members.push(Member {
            id,
            zone: peer.keys.get(KEY_ZONE).cloned().unwrap_or_default(),
            state,
            tokens,
        });
    }
    let replicas = cluster_replicas(peers)
        .map(|(n, _)| n)
        .unwrap_or(fallback_replicas);
    Ring::new(members, replicas)
}

/// The highest-epoch replication setting gossiped by any peer.
pub fn cluster_replicas(peers: &[PeerState]) -> Option<(usize, u64)> {
    peers
        .iter()
        .filter_map(|p| p.keys.get(KEY_REPLICAS))
        .filter_map(|s| parse_replicas(s))
        .max_by_key(|(n, epoch)| (*epoch, *n))
}

fn parse_replicas(s: &str) -> Option<(usize, u64)> {
    let (n, epoch) = s.split_once(':')?;
    let n: usize = n.parse().ok()?;
    (n >= 1).then_some(())?;
    Some((n, epoch.parse().ok()?))
}

/// A running membership: gossip plus the ring derived from it.
pub struct Membership {
    /// The chitchat server.
    handle: ChitchatHandle,
    /// The current ring; replaced on every change of digest.
    ring: watch::Receiver<Arc<Ring>>,
    /// True once this node has published its tokens.
    ready: Arc<AtomicBool>,
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
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(24 * 3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let founding = options.seeds.is_empty();
        let replicas_key = format!("{}:{}", options.replicas, if founding { 1 } else { 0 });
        let mut initial = vec![
            (KEY_ZONE.to_string(), options.zone.clone()),
            (KEY_REPLICAS.to_string(), replicas_key),
        ];
        if founding {
            let tokens = match &options.tokens {
                Some(tokens) => tokens.clone(),
                None => {
                    let empty = Ring::new(Vec::new(), options.replicas);
                    let tokens =
                        allocate_tokens(&empty, &self_member(&options), options.token_count);
                    (options.keep_tokens)(&tokens)?;
                    tokens
                }
            };
            initial.push((KEY_TOKENS.to_string(), encode_tokens(&tokens)));
            initial.push((KEY_STATE.to_string(), MemberState::Normal.as_str().into()));
        } else {
            initial.push((KEY_STATE.to_string(), MemberState::Joining.as_str().into()));
        }
        let handle = spawn_chitchat(config, initial, &UdpTransport)
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("gossip: {e:#}"))))?;
        let ready = Arc::new(AtomicBool::new(founding));
        let (tx, rx) = watch::channel(Arc::new(Ring::new(Vec::new(), options.replicas)));
        tokio::spawn(refresh_loop(
            handle.chitchat(),
            tx,
            options.clone(),
            ready.clone(),
        ));
        Ok(Membership {
            handle,
            ring: rx,
            ready,
        })
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.borrow().clone()
    }

    /// Whether this node has joined (published its tokens).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
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
    (options.keep_tokens)(&tokens)?;
    Ok(Some(tokens))
}

async fn refresh_loop(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    tx: watch::Sender<Arc<Ring>>,
    options: MembershipOptions,
    ready: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(REFRESH_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_wait_log = std::time::Instant::now();
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let mut guard = chitchat.lock().await;
        let live: HashSet<ChitchatId> = guard.live_nodes().cloned().collect();
        let peers: Vec<PeerState> = guard
            .node_states()
            .iter()
            .map(|(id, state)| PeerState {
                node: id.node_id.to_string(),
                generation: id.generation_id,
                live: live.contains(id),
                keys: state
                    .key_values()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .collect();
        // Adopt the cluster's replication setting when it is newer than ours.
        if let Some((n, epoch)) = cluster_replicas(&peers) {
            let own = guard
                .self_node_state()
                .get(KEY_REPLICAS)
                .map(str::to_string);
            let wanted = format!("{n}:{epoch}");
            if own.as_deref() != Some(wanted.as_str()) {
                guard.self_node_state().set(KEY_REPLICAS, wanted);
            }
        }
        let mut join = None;
        if !ready.load(Ordering::Acquire) {
            let others: Vec<PeerState> = peers
                .iter()
                .filter(|p| p.node != options.node.as_str())
                .cloned()
                .collect();
            if others.iter().any(|p| p.live) {
                join = Some(others);
            } else if last_wait_log.elapsed() > Duration::from_secs(5) {
                last_wait_log = std::time::Instant::now();
                tracing::warn!(seeds = ?options.seeds, "no seed answers yet; still trying");
            }
        }
        drop(guard);
        if let Some(others) = join {
            match join_tokens(&options, &others).await {
                Ok(Some(tokens)) => {
                    let mut guard = chitchat.lock().await;
                    let me = guard.self_node_state();
                    me.set(KEY_TOKENS, encode_tokens(&tokens));
                    me.set(KEY_STATE, MemberState::Normal.as_str());
                    ready.store(true, Ordering::Release);
                    tracing::info!(node = %options.node, tokens = tokens.len(), "joined the cluster");
                }
                Ok(None) => {}
                Err(err) => tracing::error!(%err, "cannot keep the chosen tokens; not joining yet"),
            }
        }
        let ring = ring_from_peers(&peers, options.replicas);
        if ring.digest() != tx.borrow().digest() {
            tracing::info!(
                digest = format!("{:016x}", ring.digest()),
                members = ring.members().count(),
                replicas = ring.replicas(),
                "ring changed"
            );
            let _ = tx.send(Arc::new(ring));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, generation: u64, live: bool, keys: &[(&str, &str)]) -> PeerState {
        PeerState {
            node: node.into(),
            generation,
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
            .map(|m| (m.id.to_string(), m.state))
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
        assert_eq!(cluster_replicas(&peers), Some((5, 2)));
    }
}
