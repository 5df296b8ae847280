//! Unit and property tests of the ring: ids, placement, zones, digests,
//! transitions and token allocation.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

fn random_tokens(count: usize) -> Vec<Token> {
    let mut tokens: Vec<Token> = (0..count).map(|_| Token(rand::random())).collect();
    tokens.sort();
    tokens.dedup();
    tokens
}

fn member(i: usize, zone: &str, tokens: usize) -> Member {
    Member {
        id: NodeId::parse(&format!("127.0.0.1:{}", 1000 + i)).unwrap(),
        zone: zone.to_string(),
        state: MemberState::Normal,
        live: true,
        tokens: random_tokens(tokens),
    }
}

#[test]
fn node_id_parsing() {
    assert!(NodeId::parse("a:1").is_ok());
    assert!(NodeId::parse("[::1]:50140").is_ok());
    assert!(NodeId::parse("nohost").is_err());
    assert!(NodeId::parse(":1").is_err());
    assert!(NodeId::parse("a:0").is_err());
    assert!(NodeId::parse("a:99999").is_err());
    assert_eq!(NodeId::parse("h:50140").unwrap().port(), 50140);
}

#[test]
fn replicas_are_distinct_and_n_long() {
    let ring = Ring::new((0..5).map(|i| member(i, "", 16)), 3);
    for k in 0..500 {
        let nodes = ring.nodes_of(format!("key{k}").as_bytes());
        assert_eq!(nodes.len(), 3);
        let set: HashSet<_> = nodes.iter().collect();
        assert_eq!(set.len(), 3);
    }
}

#[test]
fn replica_set_hashes_change_only_where_a_join_moves_a_key() {
    let members: Vec<Member> = (0..4).map(|i| member(i, "", 16)).collect();
    let before = Ring::new(members.clone(), 3);
    let mut joiner = member(4, "", 16);
    joiner.state = MemberState::Normal;
    let after = Ring::new(members.into_iter().chain([joiner]), 3);
    let (mut same, mut moved) = (0, 0);
    for k in 0..500 {
        let key = format!("key{k}");
        let (old, new) = (
            before.nodes_of(key.as_bytes()),
            after.nodes_of(key.as_bytes()),
        );
        let mut sorted = old.clone();
        sorted.reverse();
        assert_eq!(replica_set_hash(&old), replica_set_hash(&sorted));
        if old.iter().all(|n| new.contains(n)) {
            assert_eq!(replica_set_hash(&old), replica_set_hash(&new));
            same += 1;
        } else {
            assert_ne!(replica_set_hash(&old), replica_set_hash(&new));
            moved += 1;
        }
    }
    assert!(same > 0 && moved > 0, "{same} {moved}");
}

#[test]
fn fewer_nodes_than_n_gives_every_node() {
    let ring = Ring::new((0..2).map(|i| member(i, "", 8)), 3);
    assert_eq!(ring.nodes_of(b"k").len(), 2);
    let empty = Ring::new(Vec::new(), 3);
    assert!(empty.nodes_of(b"k").is_empty());
}

#[test]
fn three_zones_get_one_replica_each() {
    let zones = ["a", "a", "a", "b", "b", "c", "c", "c", "c"];
    let ring = Ring::new(zones.iter().enumerate().map(|(i, z)| member(i, z, 16)), 3);
    for k in 0..1000 {
        let nodes = ring.nodes_of(format!("key{k}").as_bytes());
        let zones: HashSet<_> = nodes
            .iter()
            .map(|n| ring.member(n).unwrap().zone.clone())
            .collect();
        assert_eq!(zones.len(), 3, "{nodes:?}");
    }
}

#[test]
fn fewer_zones_than_n_still_distinct_nodes() {
    let zones = ["a", "a", "b", "b"];
    let ring = Ring::new(zones.iter().enumerate().map(|(i, z)| member(i, z, 16)), 3);
    for k in 0..1000 {
        let nodes = ring.nodes_of(format!("key{k}").as_bytes());
        assert_eq!(nodes.iter().collect::<HashSet<_>>().len(), 3);
        let zones: HashSet<_> = nodes
            .iter()
            .map(|n| ring.member(n).unwrap().zone.clone())
            .collect();
        assert_eq!(zones.len(), 2);
    }
}

#[test]
fn joining_and_removed_members_own_nothing() {
    let mut members: Vec<Member> = (0..4).map(|i| member(i, "", 16)).collect();
    members[0].state = MemberState::Joining;
    members[1].state = MemberState::Removed;
    members[2].state = MemberState::Down;
    let ring = Ring::new(members.clone(), 3);
    for k in 0..200 {
        let nodes = ring.nodes_of(format!("k{k}").as_bytes());
        assert!(!nodes.contains(&members[0].id));
        assert!(!nodes.contains(&members[1].id));
        assert_eq!(nodes.len(), 2);
    }
}

#[test]
fn load_shares_sum_to_one() {
    let ring = Ring::new((0..7).map(|i| member(i, "", 32)), 3);
    let total: f64 = ring.load_shares().values().sum();
    assert!((total - 1.0).abs() < 1e-6, "{total}");
}

#[test]
fn digest_depends_on_members_not_on_order() {
    let members: Vec<Member> = (0..4).map(|i| member(i, "", 8)).collect();
    let mut reversed = members.clone();
    reversed.reverse();
    assert_eq!(
        Ring::new(members.clone(), 3).digest(),
        Ring::new(reversed, 3).digest()
    );
    assert_ne!(
        Ring::new(members.clone(), 3).digest(),
        Ring::new(members, 2).digest()
    );
}

#[test]
fn liveness_is_not_part_of_the_digest() {
    let members: Vec<Member> = (0..4).map(|i| member(i, "", 8)).collect();
    let mut one_down = members.clone();
    one_down[1].live = false;
    assert_eq!(
        Ring::new(members, 3).digest(),
        Ring::new(one_down.clone(), 3).digest()
    );
    let ring = Ring::new(one_down, 3);
    let shown: Vec<_> = ring.members().map(|m| m.shown_state()).collect();
    assert_eq!(shown[1], MemberState::Down);
    assert_eq!(shown[0], MemberState::Normal);
}

#[test]
fn token_ranges_wrap() {
    let r = TokenRange {
        start: Token(10),
        end: Token(20),
    };
    assert!(!r.contains(Token(10)) && r.contains(Token(11)) && r.contains(Token(20)));
    let wrap = TokenRange {
        start: Token(20),
        end: Token(10),
    };
    assert!(wrap.contains(Token(u64::MAX)) && wrap.contains(Token(0)));
    assert!(wrap.contains(Token(10)) && !wrap.contains(Token(15)));
    let whole = TokenRange {
        start: Token(5),
        end: Token(5),
    };
    assert!(whole.contains(Token(5)) && whole.contains(Token(6)));
}

/// Every key's pending nodes are exactly its target replicas that are
/// not replicas now, and `movements` lists the same gains by range.
fn check_transition(ring: &Ring) {
    let movements = ring.movements();
    assert!(ring.in_transition());
    for k in 0..2000u32 {
        let key = k.to_be_bytes();
        let natural = ring.nodes_of(&key);
        let target = ring.target_nodes_of(&key);
        let pending = ring.pending_of(&key);
        let expected: Vec<_> = target
            .iter()
            .filter(|n| !natural.contains(n))
            .cloned()
            .collect();
        assert_eq!(pending, expected);
        let token = Token::of_key(&key);
        let mut gained: Vec<_> = movements
            .iter()
            .filter(|m| m.range.contains(token))
            .map(|m| {
                assert_eq!(m.sources, natural);
                m.gainer.clone()
            })
            .collect();
        gained.sort();
        let mut expected = expected;
        expected.sort();
        assert_eq!(gained, expected);
    }
}

#[test]
fn a_joining_member_gains_only_what_it_will_own() {
    let mut members: Vec<Member> = (0..4).map(|i| member(i, "", 8)).collect();
    members.push(Member {
        state: MemberState::Joining,
        ..member(4, "", 8)
    });
    let ring = Ring::new(members.clone(), 3);
    check_transition(&ring);
    let joiner = members[4].id.clone();
    assert!(ring.movements().iter().all(|m| m.gainer == joiner));
    assert!(!ring.movements().is_empty());
    for k in 0..500u32 {
        assert!(!ring.nodes_of(&k.to_be_bytes()).contains(&joiner));
    }
}

#[test]
fn a_leaving_member_hands_its_ranges_to_the_others() {
    let mut members: Vec<Member> = (0..5).map(|i| member(i, "", 8)).collect();
    members[2].state = MemberState::Leaving;
    let ring = Ring::new(members.clone(), 3);
    check_transition(&ring);
    let leaver = members[2].id.clone();
    assert!(ring.movements().iter().all(|m| m.gainer != leaver));
    for k in 0..500u32 {
        assert!(!ring.target_nodes_of(&k.to_be_bytes()).contains(&leaver));
    }
}

#[test]
fn raising_n_gains_copies_and_lowering_it_gains_none() {
    let members: Vec<Member> = (0..6).map(|i| member(i, "", 8)).collect();
    let up = Ring::changing(members.clone(), 3, 5);
    check_transition(&up);
    assert_eq!(up.target_nodes_of(b"k").len(), 5);
    assert_eq!(up.pending_of(b"k").len(), 2);
    let down = Ring::changing(members.clone(), 3, 2);
    assert!(down.movements().is_empty());
    assert_ne!(up.digest(), Ring::new(members, 3).digest());
}

#[test]
fn bad_token_lists_are_errors() {
    assert!(decode_tokens("zz").is_err());
    assert!(decode_tokens("1,,2").is_err());
    assert_eq!(decode_tokens("").unwrap(), vec![]);
}

fn grow(nodes: usize, tokens: usize, replicas: usize) -> Ring {
    grow_from(0, nodes, tokens, replicas, 0)
}

/// A ring of `nodes` nodes (ids from `base`, spread over `zones` zones
/// when not 0) joining one after another.
fn grow_from(base: usize, nodes: usize, tokens: usize, replicas: usize, zones: usize) -> Ring {
    let mut ring = Ring::new(Vec::new(), replicas);
    for i in base..base + nodes {
        let zone = if zones == 0 {
            String::new()
        } else {
            format!("z{}", i % zones)
        };
        let joining = member(i, &zone, 0);
        let tokens = allocate_tokens(&ring, &joining, tokens);
        let mut members: Vec<Member> = ring.members().cloned().collect();
        members.push(Member { tokens, ..joining });
        ring = Ring::new(members, replicas);
    }
    ring
}

fn max_over_mean(ring: &Ring) -> f64 {
    let loads = ring.load_shares();
    let mean = 1.0 / loads.len() as f64;
    loads.values().fold(0.0f64, |m, l| m.max(*l)) / mean
}

#[test]
fn allocated_tokens_keep_ten_nodes_within_3_percent() {
    for base in [0, 50, 300] {
        let ring = grow_from(base, 10, DEFAULT_TOKENS_PER_NODE, 3, 0);
        let ratio = max_over_mean(&ring);
        assert!(
            ratio <= 1.03,
            "most loaded node holds {ratio:.4}x the mean (ids from {base})"
        );
    }
}

#[test]
fn allocated_tokens_balance_replica_load_with_zones_too() {
    let ring = grow_from(0, 9, DEFAULT_TOKENS_PER_NODE, 3, 3);
    let ratio = max_over_mean(&ring);
    assert!(
        ratio <= 1.05,
        "most loaded of 9 nodes holds {ratio:.4}x the mean"
    );
}

#[test]
fn nodes_joining_the_same_ring_at_once_choose_different_tokens() {
    let ring = grow(1, DEFAULT_TOKENS_PER_NODE, 3);
    let a = allocate_tokens(&ring, &member(1, "", 0), DEFAULT_TOKENS_PER_NODE);
    let b = allocate_tokens(&ring, &member(2, "", 0), DEFAULT_TOKENS_PER_NODE);
    assert!(a.iter().all(|t| !b.contains(t)), "{a:?} {b:?}");
}

#[test]
fn an_eleventh_node_moves_close_to_the_minimum() {
    let ten = grow(10, DEFAULT_TOKENS_PER_NODE, 3);
    let joining = member(10, "", 0);
    let tokens = allocate_tokens(&ten, &joining, DEFAULT_TOKENS_PER_NODE);
    let mut members: Vec<Member> = ten.members().cloned().collect();
    members.push(Member {
        tokens,
        ..joining.clone()
    });
    let eleven = Ring::new(members, 3);
    // What the new node holds is what moves to it; the minimum is 1/11.
    let moved = eleven.load_shares()[&joining.id];
    let minimum = 1.0 / 11.0;
    assert!(
        moved <= 1.1 * minimum,
        "moved {:.4}, minimum {minimum:.4}",
        moved
    );
    assert!(max_over_mean(&eleven) <= 1.08);
}

proptest! {
    #[test]
    fn token_codec_round_trips(raw in proptest::collection::vec(any::<u64>(), 0..100)) {
        let mut tokens: Vec<Token> = raw.into_iter().map(Token).collect();
        tokens.sort();
        prop_assert_eq!(decode_tokens(&encode_tokens(&tokens)).unwrap(), tokens);
    }

    #[test]
    fn placement_is_the_same_whatever_the_member_order(seed in any::<u64>(), key in any::<Vec<u8>>()) {
        let members: Vec<Member> = (0..6u64).map(|i| Member {
            id: NodeId::parse(&format!("n:{}", 1 + i)).unwrap(),
            zone: format!("z{}", i % 2),
            state: MemberState::Normal,
            live: true,
            tokens: (0..8u64).map(|j| Token(xxh3_64(&(seed ^ (i * 100 + j)).to_be_bytes()))).collect(),
        }).collect();
        let mut shuffled = members.clone();
        shuffled.rotate_left((seed % 6) as usize);
        prop_assert_eq!(Ring::new(members, 3).nodes_of(&key), Ring::new(shuffled, 3).nodes_of(&key));
    }
}
