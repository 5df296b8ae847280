//! A membership without gossip, for unit tests of the layers above: its
//! ring is built from a fixed list of peer records by the same pure
//! function gossip's refresh uses ([`ring_from_peers`]), and a view it
//! learns (a replica's fence refusal) is merged in as [`Membership::learn`]
//! merges it ([`merge::merge`]), so the ring then moves as a node's would.
//! Its agreed ring stays the ring it started with: agreement comes from
//! gossip, which this has none of.
//!
//! [`Membership::learn`]: super::Membership::learn

use std::sync::{Arc, Mutex};

use super::{KEY_STATE, KEY_TOKENS, PeerState, merge, ring_from_peers};
use crate::ring::{MemberState, Ring, Token, encode_tokens};

/// Rings from a fixed view plus what was learned.
pub struct FixedMembership {
    /// The replication factor of a view that publishes none.
    replicas: usize,
    /// The view and the rings built from it; a std mutex, never held
    /// across an await.
    state: Mutex<State>,
}

struct State {
    /// Every peer record known: the fixed ones and those learned.
    view: Vec<PeerState>,
    /// The ring built from `view`.
    ring: Arc<Ring>,
    /// The last agreed ring: the first ring, kept.
    agreed: Arc<Ring>,
    /// The views learned, in order, for tests to look at.
    learned: Vec<Vec<PeerState>>,
}

impl FixedMembership {
    /// Rings from `view` with `replicas` copies; the agreed ring is the
    /// same ring.
    pub fn new(view: Vec<PeerState>, replicas: usize) -> FixedMembership {
        let ring = Arc::new(ring_from_peers(&view, replicas));
        FixedMembership {
            replicas,
            state: Mutex::new(State {
                view,
                agreed: ring.clone(),
                ring,
                learned: Vec::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.state().ring.clone()
    }

    /// The last agreed ring.
    pub fn agreed_ring(&self) -> Arc<Ring> {
        self.state().agreed.clone()
    }

    /// What this membership knows of the ring, as sent to a replica.
    pub fn ring_view(&self) -> Vec<PeerState> {
        merge::placement_only(&self.state().view)
    }

    /// Merges `view` in and rebuilds the ring from it at once.
    pub async fn learn(&self, view: Vec<PeerState>) {
        let mut state = self.state();
        state.view = merge::merge(&state.view, &view);
        state.ring = Arc::new(ring_from_peers(&state.view, self.replicas));
        state.learned.push(view);
    }

    /// The views learned so far, oldest first.
    pub fn learned(&self) -> Vec<Vec<PeerState>> {
        self.state().learned.clone()
    }
}

/// The record of a live, normal member `node` owning `tokens`, as gossip
/// would carry it (generation 1, version `version`).
pub fn normal_peer(node: &str, tokens: &[Token], version: u64) -> PeerState {
    PeerState {
        node: node.to_string(),
        generation: 1,
        version,
        live: true,
        keys: [
            (KEY_TOKENS.to_string(), encode_tokens(tokens)),
            (
                KEY_STATE.to_string(),
                MemberState::Normal.as_str().to_string(),
            ),
        ]
        .into_iter()
        .collect(),
    }
}
