//! Consistent hashing with virtual nodes (F6) and zone-aware placement (F9).
//!
//! Pure data and functions: no I/O, no clocks. A [`Ring`] is built from the
//! members the membership layer knows and answers "which nodes hold this
//! key", in preference order. Every node that sees the same members builds the
//! same ring and the same [`Ring::digest`].
//!
//! Placement: a key hashes (xxh3-64) to a [`Token`]; walking the ring clockwise
//! from there, the replicas are the first N distinct nodes, taking nodes from
//! zones not yet used first (Cassandra's rack awareness) and filling from the
//! remaining nodes in walk order when there are fewer zones than N. Members
//! that are `Joining` or `Removed` own no ranges; `Down` members keep theirs
//! (a crash must not move data), and quorums route around them.
//!
//! # Files
//!
//! - `mod.rs`: [`Ring`], built from members and N, and its digest.
//! - `types.rs`: [`NodeId`], [`Token`], [`MemberState`], [`Member`],
//!   [`TokenRange`], [`Movement`] and the gossip form of token lists.
//! - `placement.rs`: which nodes hold a key or a range, now and once a
//!   transition is over, and what a transition moves.
//! - `allocate.rs`: tokens for a joining node ([`allocate_tokens`]).

mod allocate;
mod placement;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

pub use self::allocate::allocate_tokens;
use self::placement::Placement;
pub use self::placement::replica_set_hash;
pub use self::types::{
    DEFAULT_TOKENS_PER_NODE, Member, MemberState, Movement, NodeId, Token, TokenRange,
    decode_tokens, encode_tokens,
};

/// An immutable view of the ring: members, tokens and the replication
/// factor, now and once the transitions under way are over.
///
/// Two placements: the *natural* one (members that serve reads now: normal,
/// leaving, down) and, while a member joins or leaves or N changes, the
/// *target* one (normal, joining, down; the new N). Reads go to the natural
/// replicas; writes go to those and to the *pending* ones, the target
/// replicas not yet natural (F18), so that nothing written during a
/// transition is missing once it ends.
#[derive(Debug, Clone)]
pub struct Ring {
    /// All known members by id, including those that own nothing.
    members: BTreeMap<NodeId, Member>,
    /// Who serves each range now.
    natural: Placement,
    /// Who will, when that differs.
    target: Option<Placement>,
    /// Hash of members, states, tokens and both replication factors (not
    /// liveness); equal rings have equal digests.
    digest: u64,
}

impl Ring {
    /// Builds the ring from members and the replication factor.
    pub fn new(members: impl IntoIterator<Item = Member>, replicas: usize) -> Ring {
        Ring::changing(members, replicas, replicas)
    }

    /// Builds the ring of a cluster moving from `replicas` to
    /// `target_replicas` copies of each key.
    pub fn changing(
        members: impl IntoIterator<Item = Member>,
        replicas: usize,
        target_replicas: usize,
    ) -> Ring {
        let members: BTreeMap<NodeId, Member> =
            members.into_iter().map(|m| (m.id.clone(), m)).collect();
        let natural = Placement::new(members.values().filter(|m| m.state.owns_ranges()), replicas);
        let moving = target_replicas != replicas
            || members
                .values()
                .any(|m| matches!(m.state, MemberState::Joining | MemberState::Leaving));
        let target = moving.then(|| {
            Placement::new(
                members.values().filter(|m| m.state.will_own_ranges()),
                target_replicas,
            )
        });
        let digest = digest_of(&members, replicas, target_replicas);
        Ring {
            members,
            natural,
            target,
            digest,
        }
    }

    /// The replication factor N serving reads now.
    pub fn replicas(&self) -> usize {
        self.natural.replicas
    }

    /// The replication factor once the transition under way is over.
    pub fn target_replicas(&self) -> usize {
        self.target.as_ref().unwrap_or(&self.natural).replicas
    }

    /// Whether a join, leave, removal or change of N is under way.
    pub fn in_transition(&self) -> bool {
        self.target.is_some()
    }

    /// All members, including those that own nothing.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// Whether `id` is a member believed up.
    pub fn is_live(&self, id: &NodeId) -> bool {
        self.members.get(id).is_some_and(|m| m.live)
    }

    /// A hash of the whole view; nodes agree on the ring iff digests agree.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

fn digest_of(members: &BTreeMap<NodeId, Member>, replicas: usize, target: usize) -> u64 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(replicas as u64).to_be_bytes());
    bytes.extend_from_slice(&(target as u64).to_be_bytes());
    for m in members.values() {
        bytes.extend_from_slice(m.id.as_str().as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(m.zone.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(m.state.as_str().as_bytes());
        bytes.push(0);
        for t in &m.tokens {
            bytes.extend_from_slice(&t.0.to_be_bytes());
        }
    }
    xxh3_64(&bytes)
}
