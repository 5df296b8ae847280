//! Unit tests of the pure view: gossip state to ring, generations,
//! removals, replication settings and member changes.

use super::view::*;
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
