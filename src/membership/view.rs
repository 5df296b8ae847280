//! The pure view of membership: what gossip says about each peer
//! ([`PeerState`]) turned into a [`Ring`] ([`ring_from_peers`]), the
//! cluster's replication setting ([`cluster_replicas`]) and removals
//! ([`cluster_removals`]), and how members' states changed between two
//! rings.
//!
//! Invariants: no I/O, no clocks, no locks: every node given the same peer
//! states builds the same ring; of several instances of one `host:port`
//! the newest generation speaks for it. Does not read chitchat, publish
//! anything or keep tokens: the refresh task (`refresh.rs`) does.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::{KEY_REPLICAS, KEY_STATE, KEY_TOKENS, KEY_ZONE, REMOVAL_PREFIX};
use crate::ring::{Member, MemberState, NodeId, Ring, Token, decode_tokens, encode_tokens};

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

    pub(super) fn rank(&self) -> (u64, bool) {
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
    pub(super) fn parse(s: &str) -> Option<Removal> {
        let (hash, phase) = s.split_once(':')?;
        let tokens_hash = u64::from_str_radix(hash, 16).ok()?;
        let done = match phase {
            "removing" => false,
            "removed" => true,
            _ => return None,
        };
        Some(Removal { tokens_hash, done })
    }

    pub(super) fn encode(&self) -> String {
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
pub(super) fn newest_instances(peers: &[PeerState]) -> BTreeMap<&str, &PeerState> {
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

/// A member whose shown state (F7: joining, normal, leaving, down,
/// removed) differs between two rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemberChange {
    /// The member.
    pub(super) node: NodeId,
    /// Its state before; `None`: it was not a member.
    pub(super) from: Option<MemberState>,
    /// Its state now.
    pub(super) to: MemberState,
}

impl MemberChange {
    /// The log message: what happened to the member.
    pub(super) fn describe(&self) -> &'static str {
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
pub(super) fn member_changes(old: &Ring, new: &Ring) -> Vec<MemberChange> {
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
