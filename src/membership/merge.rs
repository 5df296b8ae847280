//! What different nodes know of the ring, merged: the placement part of
//! the gossip state (each member's tokens, zone and state, the replication
//! setting, removal markers) as a set of peer records that any node can
//! send another over RPC, and the rule that combines two such sets.
//!
//! The merge is a join: per member instance (node and generation) the copy
//! with the higher version wins (versions only grow within an instance),
//! and an instance is believed up if either side believes so. It is
//! commutative, associative and idempotent, so nodes that exchange their
//! views in any order end with the same ring. Ring-version fencing uses it:
//! a replica whose ring plans a key differently from the request's
//! coordinator refuses it and sends its view; the coordinator merges it in
//! (and sends its own when it asks again, so that a lagging replica learns
//! too). Pure: no I/O.

use std::collections::BTreeMap;

use super::{KEY_REPLICAS, KEY_STATE, KEY_TOKENS, KEY_ZONE, PeerState, REMOVAL_PREFIX};
use crate::proto::{PeerRecord, RingView};

/// Most peer records accepted from one view (a cluster has far fewer
/// member instances; more is a malformed or hostile message).
pub const MAX_VIEW_PEERS: usize = 4096;
/// Most keys of one peer record accepted.
const MAX_PEER_KEYS: usize = 256;

/// Whether gossip key `key` takes part in placement.
pub fn is_placement_key(key: &str) -> bool {
    matches!(key, KEY_TOKENS | KEY_ZONE | KEY_STATE | KEY_REPLICAS)
        || key.starts_with(REMOVAL_PREFIX)
}

/// `peers` with only the keys that take part in placement.
pub fn placement_only(peers: &[PeerState]) -> Vec<PeerState> {
    peers
        .iter()
        .map(|p| PeerState {
            keys: p
                .keys
                .iter()
                .filter(|(k, _)| is_placement_key(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..p.clone()
        })
        .collect()
}

/// The union of two views: per instance, the copy with the higher version,
/// believed up if either copy is.
pub fn merge(a: &[PeerState], b: &[PeerState]) -> Vec<PeerState> {
    let mut by_instance: BTreeMap<(&str, u64), PeerState> = BTreeMap::new();
    for peer in a.iter().chain(b) {
        match by_instance.get_mut(&(peer.node.as_str(), peer.generation)) {
            None => {
                by_instance.insert((peer.node.as_str(), peer.generation), peer.clone());
            }
            Some(held) => {
                let live = held.live || peer.live;
                // Equal versions of one instance carry equal keys; the tie
                // is broken on the keys anyway, so that any input merges
                // the same in any order.
                if (peer.version, sorted(peer)) > (held.version, sorted(held)) {
                    *held = peer.clone();
                }
                held.live = live;
            }
        }
    }
    by_instance.into_values().collect()
}

/// A peer's keys in order, for a deterministic comparison.
fn sorted(peer: &PeerState) -> Vec<(&String, &String)> {
    let mut keys: Vec<_> = peer.keys.iter().collect();
    keys.sort();
    keys
}

/// Drops from `learned` the copies `gossip` holds as new or newer: once
/// gossip brings what a peer sent, the learned copy adds nothing.
pub fn prune(learned: &mut Vec<PeerState>, gossip: &[PeerState]) {
    learned.retain(|l| {
        !gossip
            .iter()
            .any(|g| g.node == l.node && g.generation == l.generation && g.version >= l.version)
    });
}

/// A view as sent over RPC.
pub fn to_wire(peers: &[PeerState]) -> RingView {
    RingView {
        peers: peers
            .iter()
            .map(|p| PeerRecord {
                node: p.node.clone(),
                generation: p.generation,
                version: p.version,
                live: p.live,
                keys: p.keys.clone(),
            })
            .collect(),
    }
}

/// A view received over RPC; records past the limits are left out.
pub fn from_wire(view: RingView) -> Vec<PeerState> {
    view.peers
        .into_iter()
        .take(MAX_VIEW_PEERS)
        .filter(|p| p.keys.len() <= MAX_PEER_KEYS)
        .map(|p| PeerState {
            node: p.node,
            generation: p.generation,
            version: p.version,
            live: p.live,
            keys: p
                .keys
                .into_iter()
                .filter(|(k, _)| is_placement_key(k))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::ring_from_peers;
    use proptest::prelude::*;

    fn peer(node: &str, generation: u64, version: u64, live: bool, state: &str) -> PeerState {
        PeerState {
            node: node.into(),
            generation,
            version,
            live,
            keys: [
                (KEY_TOKENS.to_string(), format!("{:x}", generation * 7 + 1)),
                (KEY_STATE.to_string(), state.to_string()),
                ("stats".to_string(), "{}".to_string()),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn the_newer_copy_of_an_instance_wins_and_up_wins_over_down() {
        let old = peer("d:1", 1, 5, true, "joining");
        let new = peer("d:1", 1, 9, false, "normal");
        let merged = merge(std::slice::from_ref(&old), std::slice::from_ref(&new));
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].keys[KEY_STATE], "normal");
        assert!(merged[0].live);
        assert_eq!(merge(&[new], &[old])[0].keys[KEY_STATE], "normal");
        // Another generation is another instance: both kept.
        let restarted = peer("d:1", 2, 1, true, "joining");
        assert_eq!(merge(&merged, &[restarted]).len(), 2);
    }

    #[test]
    fn gossip_makes_learned_copies_redundant() {
        let mut learned = vec![
            peer("d:1", 1, 9, true, "normal"),
            peer("e:1", 1, 3, true, "joining"),
        ];
        prune(
            &mut learned,
            &[
                peer("d:1", 1, 9, true, "normal"),
                peer("e:1", 1, 2, true, "joining"),
            ],
        );
        assert_eq!(learned.len(), 1);
        assert_eq!(learned[0].node, "e:1");
    }

    #[test]
    fn only_placement_keys_travel() {
        let view = placement_only(&[peer("a:1", 1, 1, true, "normal")]);
        assert!(!view[0].keys.contains_key("stats"));
        let back = from_wire(to_wire(&view));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].keys, view[0].keys);
        assert_eq!((back[0].generation, back[0].version), (1, 1));
    }

    fn arbitrary_view() -> impl Strategy<Value = Vec<PeerState>> {
        let one = (0u8..4, 1u64..3, 0u64..6, any::<bool>(), 0usize..3).prop_map(
            |(node, generation, version, live, state)| {
                let state = ["joining", "normal", "leaving"][state];
                peer(
                    &format!("n{node}:1"),
                    generation,
                    version * 10 + generation,
                    live,
                    state,
                )
            },
        );
        proptest::collection::vec(one, 0..8)
    }

    proptest! {
        /// The laws that make views exchanged in any order converge: the
        /// rings built from the merges are the same.
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in arbitrary_view(),
            b in arbitrary_view(),
            c in arbitrary_view(),
        ) {
            let digest = |peers: &[PeerState]| ring_from_peers(peers, 3).digest();
            prop_assert_eq!(digest(&merge(&a, &b)), digest(&merge(&b, &a)));
            prop_assert_eq!(
                digest(&merge(&merge(&a, &b), &c)),
                digest(&merge(&a, &merge(&b, &c)))
            );
            let ab = merge(&a, &b);
            prop_assert_eq!(digest(&merge(&ab, &ab)), digest(&ab));
        }
    }
}
