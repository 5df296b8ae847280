//! Quorum sizes: per request `?w=` / `?r=` as a count or `all`; the
//! default is a majority of N. [`WritePlan`]: which nodes a write goes to
//! and which sets of acknowledgements make it succeed, during a ring
//! transition too.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ring::{MemberState, NodeId, Ring, replica_set_hash};

/// How many replicas must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quorum {
    /// A majority of N (N / 2 + 1).
    #[default]
    Majority,
    /// Every replica.
    All,
    /// Exactly this many, 1..=N.
    Count(usize),
}

impl Quorum {
    /// The number of replicas needed when the key has `n` replicas.
    pub fn count(self, n: usize) -> Result<usize> {
        match self {
            Quorum::Majority => Ok(n / 2 + 1),
            Quorum::All => Ok(n),
            Quorum::Count(k) if (1..=n).contains(&k) => Ok(k),
            Quorum::Count(k) => Err(Error::invalid(format!(
                "quorum {k} is outside 1..={n} (the replication factor)"
            ))),
        }
    }

    /// The number needed among `n` replicas, a count above `n` meaning all
    /// of them (the replication factor a transition moves to may be smaller
    /// than the one the request was checked against).
    pub fn count_clamped(self, n: usize) -> usize {
        match self {
            Quorum::Count(k) => k.clamp(1, n.max(1)),
            other => other.count(n).unwrap_or(n),
        }
    }
}

/// Where one write goes and when it has succeeded: W of the key's current
/// replicas and, while a transition is under way, also W of the replicas it
/// will have once the transition is over (a joint quorum, as Garage does
/// over layout versions); and, until every member is seen on this node's
/// ring, W of the replicas the last agreed ring gives the key, which a
/// member that has not caught up yet still reads from.
///
/// Whichever way the transition ends, W of the key's replicas then hold
/// every acknowledged write, and a reader on any ring a live member may
/// still use finds it, so a read of R with W + R > N sees it. Unlike
/// asking W + (number of pending replicas) answers, a pending replica that
/// is down costs nothing as long as W of each set answer: with one of the
/// nodes involved down, a write succeeds (its copy becomes a hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// The key's replicas now, in preference order (what `/whereis` says).
    pub replicas: Vec<NodeId>,
    /// Nodes that become replicas of the key when the transition under way
    /// ends; empty outside transitions.
    pub pending: Vec<NodeId>,
    /// The key's replicas once the transition is over (`replicas` outside
    /// transitions).
    pub target: Vec<NodeId>,
    /// The key's replicas in the last ring every member was seen on, when
    /// they differ from `replicas` and `target` (else empty).
    pub previous: Vec<NodeId>,
    /// Acknowledgements needed among `replicas`.
    pub needed: usize,
    /// Acknowledgements needed among `target`.
    pub target_needed: usize,
    /// Acknowledgements needed among `previous`.
    pub previous_needed: usize,
    /// Further sets, each with the acknowledgements needed among it: the
    /// key's replicas in the last agreed ring of a replica whose agreement
    /// lags this node's, which it asked for when it refused the write
    /// ([`WritePlan::require`]).
    pub also: Vec<(Vec<NodeId>, usize)>,
    /// Members of those sets that have left the cluster or were removed
    /// ([`gone_members`]): nothing is sent to them and no set needs more
    /// acknowledgements than it has members left.
    pub gone: Vec<NodeId>,
}

/// The nodes of `ring` that are no longer members (removed, or not on it at
/// all) among `previous`, with every member `ring` shows removed. A set of
/// an older ring may still name them, but they answer nothing: a leaver
/// handed its ranges over to the replicas of `ring` before it went, and
/// what a removed node held is held by the other replicas. Asking for
/// their answers would only fail every read and write of their keys until
/// the last member is seen on the new ring.
fn gone_members(ring: &Ring, previous: &[NodeId]) -> Vec<NodeId> {
    let removed = ring
        .members()
        .filter(|m| m.state == MemberState::Removed)
        .map(|m| m.id.clone());
    let unknown = previous
        .iter()
        .filter(|n| ring.member(n).is_none())
        .cloned();
    removed.chain(unknown).collect()
}

/// How many of `set` are not `gone`.
fn left_of(set: &[NodeId], gone: &[NodeId]) -> usize {
    set.iter().filter(|n| !gone.contains(n)).count()
}

impl WritePlan {
    /// The plan for `key` on `ring` with write quorum `w`; `agreed` is the
    /// last ring every member was seen on.
    pub fn new(ring: &Ring, agreed: &Ring, key: &[u8], w: Quorum) -> Result<WritePlan> {
        let replicas = ring.nodes_of(key);
        let pending = ring.pending_of(key);
        let target = ring.target_nodes_of(key);
        let mut previous = agreed.nodes_of(key);
        if same_set(&previous, &replicas) || same_set(&previous, &target) {
            previous.clear();
        }
        let gone = gone_members(ring, &previous);
        Ok(WritePlan {
            needed: w.count(ring.replicas())?,
            target_needed: w.count_clamped(ring.target_replicas()),
            // A ring with fewer members than N gave the key fewer
            // replicas: all of them then (a reader there could not read
            // more).
            previous_needed: w
                .count_clamped(agreed.replicas())
                .min(left_of(&previous, &gone)),
            replicas,
            pending,
            target,
            previous,
            also: Vec::new(),
            gone,
        })
    }

    /// Also needs `needed` acknowledgements among `set` (at most all of
    /// those not gone), unless a set the plan already needs is the same.
    pub fn require(&mut self, set: Vec<NodeId>, needed: usize) {
        let same = same_set;
        let needed = needed.min(left_of(&set, &self.gone));
        if needed == 0
            || (same(&set, &self.replicas) && needed <= self.needed)
            || (same(&set, &self.target) && needed <= self.target_needed)
            || (same(&set, &self.previous) && needed <= self.previous_needed)
            || self.also.iter().any(|(s, n)| same(&set, s) && needed <= *n)
        {
            return;
        }
        self.also.push((set, needed));
    }

    /// Every node the write is sent to, once each: the replicas, then the
    /// pending ones, then those of the previous ring and of the further
    /// sets.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        let mut seen: Vec<&NodeId> = Vec::new();
        self.replicas
            .iter()
            .chain(&self.pending)
            .chain(&self.previous)
            .chain(self.also.iter().flat_map(|(set, _)| set))
            .filter(move |n| {
                let new = !seen.contains(n) && !self.gone.contains(n);
                if new {
                    seen.push(n);
                }
                new
            })
    }

    /// How many nodes the write is sent to.
    pub fn len(&self) -> usize {
        self.nodes().count()
    }

    /// The sets whose quorums make the write (each a [`replica_set_hash`]),
    /// for the replicas' ring fence.
    pub fn set_hashes(&self) -> Vec<u64> {
        let mut sets = vec![
            replica_set_hash(&self.replicas),
            replica_set_hash(&self.target),
        ];
        if !self.previous.is_empty() {
            sets.push(replica_set_hash(&self.previous));
        }
        sets.extend(self.also.iter().map(|(set, _)| replica_set_hash(set)));
        let mut unique = Vec::with_capacity(sets.len());
        for set in sets {
            if !unique.contains(&set) {
                unique.push(set);
            }
        }
        unique
    }

    /// Whether the write goes nowhere (a ring without members).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the nodes `acked` make the write succeed.
    pub fn satisfied<'a>(&self, acked: impl IntoIterator<Item = &'a NodeId> + Clone) -> bool {
        let count = |set: &[NodeId]| {
            acked
                .clone()
                .into_iter()
                .filter(|n| set.contains(n))
                .count()
        };
        count(&self.replicas) >= self.needed
            && count(&self.target) >= self.target_needed
            && (self.previous.is_empty() || count(&self.previous) >= self.previous_needed)
            && self.also.iter().all(|(set, needed)| count(set) >= *needed)
    }

    /// The set `acked` falls short in, as (needed, got), for the error.
    pub fn shortfall<'a>(
        &self,
        acked: impl IntoIterator<Item = &'a NodeId> + Clone,
    ) -> (usize, usize) {
        let count = |set: &[NodeId]| {
            acked
                .clone()
                .into_iter()
                .filter(|n| set.contains(n))
                .count()
        };
        let now = count(&self.replicas);
        let target = count(&self.target);
        if now < self.needed {
            (self.needed, now)
        } else if target < self.target_needed {
            (self.target_needed, target)
        } else if !self.previous.is_empty() && count(&self.previous) < self.previous_needed {
            (self.previous_needed, count(&self.previous))
        } else {
            self.also
                .iter()
                .map(|(set, needed)| (*needed, count(set)))
                .find(|(needed, got)| got < needed)
                .unwrap_or((self.needed, now))
        }
    }
}

/// Where one read goes and when it has succeeded: R of the key's current
/// replicas and, until every member is seen on this node's ring, R of the
/// replicas the last agreed ring gives the key. A member still on that
/// ring writes to those (W of them) and not necessarily to the current
/// ones: with several joiners turning normal one by one, a ring's replicas
/// need not be the ones an older ring's writes had to reach. Reading both,
/// as writes on this ring write both, meets every write quorum a live
/// member may be counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// The key's replicas now, in preference order.
    pub replicas: Vec<NodeId>,
    /// Its replicas in the last agreed ring, when they differ (else empty).
    pub previous: Vec<NodeId>,
    /// Answers needed among `replicas`.
    pub needed: usize,
    /// Answers needed among `previous`.
    pub previous_needed: usize,
    /// Members of `previous` no longer in the cluster, as for a write
    /// ([`WritePlan::gone`]).
    pub gone: Vec<NodeId>,
}

impl ReadPlan {
    /// The plan for `key` on `ring` with read quorum `r`; `agreed` is the
    /// last ring every member was seen on (`None`: read the current
    /// replicas only).
    pub fn new(ring: &Ring, agreed: Option<&Ring>, key: &[u8], r: Quorum) -> Result<ReadPlan> {
        let replicas = ring.nodes_of(key);
        let mut previous = agreed.map(|a| a.nodes_of(key)).unwrap_or_default();
        if same_set(&previous, &replicas) {
            previous.clear();
        }
        let gone = gone_members(ring, &previous);
        Ok(ReadPlan {
            needed: r.count(ring.replicas())?,
            previous_needed: agreed
                .map(|a| r.count_clamped(a.replicas()).min(left_of(&previous, &gone)))
                .unwrap_or(0),
            replicas,
            previous,
            gone,
        })
    }

    /// Every node the read is sent to, once each.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        let extra = self
            .previous
            .iter()
            .filter(|n| !self.replicas.contains(n) && !self.gone.contains(n));
        self.replicas.iter().chain(extra)
    }

    /// The nodes to ask first and those kept back: the first are the fewest
    /// that make the read if they all answer, taken by `rank` (lowest
    /// first; ties in preference order), each only while a set it belongs
    /// to is still short. The others are asked when one of the first fails
    /// or is slow, or on a full read.
    pub fn waves(&self, rank: impl Fn(&NodeId) -> u8) -> (Vec<NodeId>, Vec<NodeId>) {
        let mut order: Vec<&NodeId> = self.nodes().collect();
        order.sort_by_key(|n| rank(n));
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for node in order {
            let short = |set: &[NodeId], needed: usize| {
                set.contains(node) && first.iter().filter(|n| set.contains(n)).count() < needed
            };
            if short(&self.replicas, self.needed) || short(&self.previous, self.previous_needed) {
                first.push(node.clone());
            } else {
                rest.push(node.clone());
            }
        }
        (first, rest)
    }

    /// The sets read (each a [`replica_set_hash`]), for the ring fence.
    pub fn set_hashes(&self) -> Vec<u64> {
        let mut sets = vec![replica_set_hash(&self.replicas)];
        if !self.previous.is_empty() {
            sets.push(replica_set_hash(&self.previous));
        }
        sets
    }

    /// The set the answers of `answered` fall short in, as (needed, got);
    /// `None` when they make the read.
    pub fn shortfall(&self, answered: &[NodeId]) -> Option<(usize, usize)> {
        let count = |set: &[NodeId]| answered.iter().filter(|n| set.contains(n)).count();
        let now = count(&self.replicas);
        let previous = count(&self.previous);
        if now < self.needed {
            Some((self.needed, now))
        } else if previous < self.previous_needed {
            Some((self.previous_needed, previous))
        } else {
            None
        }
    }
}

/// Whether two replica lists hold the same nodes.
fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

impl FromStr for Quorum {
    type Err = Error;

    fn from_str(s: &str) -> Result<Quorum> {
        match s {
            "all" => Ok(Quorum::All),
            "majority" | "quorum" => Ok(Quorum::Majority),
            _ => s
                .parse::<usize>()
                .map(Quorum::Count)
                .map_err(|_| Error::invalid(format!("quorum {s:?} is not a number or \"all\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(Quorum::Majority.count(3).unwrap(), 2);
        assert_eq!(Quorum::Majority.count(5).unwrap(), 3);
        assert_eq!(Quorum::Majority.count(1).unwrap(), 1);
        assert_eq!(Quorum::All.count(3).unwrap(), 3);
        assert_eq!(Quorum::Count(1).count(3).unwrap(), 1);
        assert!(Quorum::Count(0).count(3).is_err());
        assert!(Quorum::Count(4).count(3).is_err());
        assert_eq!("all".parse::<Quorum>().unwrap(), Quorum::All);
        assert_eq!("2".parse::<Quorum>().unwrap(), Quorum::Count(2));
        assert!("two".parse::<Quorum>().is_err());
        assert_eq!(Quorum::Count(4).count_clamped(3), 3);
        assert_eq!(Quorum::Majority.count_clamped(5), 3);
    }

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::parse(n).unwrap()).collect()
    }

    /// Natural replicas a, b, c; d joining takes c's place for this key.
    /// A ring of normal members named `names`, 8 tokens each.
    fn ring(names: &[&str], replicas: usize) -> Ring {
        use crate::ring::{Member, Token};
        let members = names.iter().enumerate().map(|(i, name)| Member {
            id: NodeId::parse(name).unwrap(),
            zone: String::new(),
            state: MemberState::Normal,
            live: true,
            tokens: (0..8u64)
                .map(|t| Token((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t << 56)))
                .collect(),
        });
        Ring::new(members, replicas)
    }

    fn joining_plan() -> WritePlan {
        WritePlan {
            replicas: ids(&["a:1", "b:1", "c:1"]),
            pending: ids(&["d:1"]),
            target: ids(&["a:1", "b:1", "d:1"]),
            previous: Vec::new(),
            needed: 2,
            target_needed: 2,
            previous_needed: 2,
            also: Vec::new(),
            gone: Vec::new(),
        }
    }

    #[test]
    fn a_transition_needs_w_of_the_current_and_of_the_target_replicas() {
        let plan = joining_plan();
        assert_eq!(plan.nodes().count(), 4);
        // W of the current replicas but only one of the target ones.
        assert!(!plan.satisfied(&ids(&["a:1", "c:1"])));
        assert_eq!(plan.shortfall(&ids(&["a:1", "c:1"])), (2, 1));
        // The pending replica down: a and b make both quorums.
        assert!(plan.satisfied(&ids(&["a:1", "b:1"])));
        // Any one of the four down still leaves both quorums reachable.
        let all = ids(&["a:1", "b:1", "c:1", "d:1"]);
        for down in &all {
            let up: Vec<NodeId> = all.iter().filter(|n| *n != down).cloned().collect();
            assert!(plan.satisfied(&up), "{down} down");
        }
        assert!(!plan.satisfied(&ids(&["c:1", "d:1"])));
        assert_eq!(plan.shortfall(&ids(&["c:1", "d:1"])), (2, 1));
    }

    #[test]
    fn until_every_member_left_the_previous_ring_its_replicas_get_w_too() {
        // d turned normal (replacing c) on this node's ring; some member
        // may still read a, b, c.
        let plan = WritePlan {
            replicas: ids(&["a:1", "b:1", "d:1"]),
            pending: Vec::new(),
            target: ids(&["a:1", "b:1", "d:1"]),
            previous: ids(&["a:1", "b:1", "c:1"]),
            needed: 2,
            target_needed: 2,
            previous_needed: 2,
            also: Vec::new(),
            gone: Vec::new(),
        };
        assert_eq!(plan.nodes().count(), 4);
        assert!(!plan.satisfied(&ids(&["b:1", "d:1"])));
        assert!(plan.satisfied(&ids(&["b:1", "d:1", "c:1"])));
        assert!(plan.satisfied(&ids(&["a:1", "b:1"])));
        assert_eq!(plan.set_hashes().len(), 2);
    }

    #[test]
    fn a_set_a_lagging_replica_asks_for_is_needed_too() {
        let mut plan = joining_plan();
        // Already needed: nothing changes.
        plan.require(ids(&["c:1", "b:1", "a:1"]), 2);
        assert!(plan.also.is_empty());
        // A replica whose agreed ring still gives the key a, c, e.
        plan.require(ids(&["a:1", "c:1", "e:1"]), 2);
        plan.require(ids(&["e:1", "a:1", "c:1"]), 2);
        assert_eq!(plan.also.len(), 1);
        assert_eq!(plan.nodes().count(), 5);
        assert_eq!(plan.set_hashes().len(), 3);
        assert!(!plan.satisfied(&ids(&["a:1", "b:1"])));
        assert_eq!(plan.shortfall(&ids(&["a:1", "b:1"])), (2, 1));
        assert!(plan.satisfied(&ids(&["a:1", "b:1", "e:1"])));
        // More than the set holds means all of it.
        plan.require(ids(&["f:1"]), 2);
        assert_eq!(plan.also.last(), Some(&(ids(&["f:1"]), 1)));
    }

    #[test]
    fn a_read_asks_r_replicas_first_the_best_ranked_and_keeps_the_others_back() {
        let plan = ReadPlan::new(
            &ring(&["a:1", "b:1", "c:1", "d:1"], 3),
            None,
            b"k",
            Quorum::Majority,
        )
        .unwrap();
        let order = plan.replicas.clone();
        // In preference order when every node ranks the same.
        let (first, rest) = plan.waves(|_| 0);
        assert_eq!(first, order[..2].to_vec());
        assert_eq!(rest, order[2..].to_vec());
        // The best ranked first (this node, then those seen up).
        let (first, rest) = plan.waves(|n| if *n == order[2] { 0 } else { 1 });
        assert_eq!(first, vec![order[2].clone(), order[0].clone()]);
        assert_eq!(rest, vec![order[1].clone()]);
        let all = ReadPlan::new(&ring(&["a:1", "b:1", "c:1"], 3), None, b"k", Quorum::All).unwrap();
        assert_eq!(all.waves(|_| 0).0.len(), 3);
        assert!(all.waves(|_| 0).1.is_empty());
    }

    /// A read of R = 2 of d, b, c while the last agreed ring gives a, b, c.
    fn joint_read_plan() -> ReadPlan {
        ReadPlan {
            replicas: ids(&["d:1", "b:1", "c:1"]),
            previous: ids(&["a:1", "b:1", "c:1"]),
            needed: 2,
            previous_needed: 2,
            gone: Vec::new(),
        }
    }

    #[test]
    fn a_first_wave_answering_whole_makes_the_read_in_every_set() {
        let plan = joint_read_plan();
        for local in ["a:1", "b:1", "c:1", "d:1"] {
            let local = NodeId::parse(local).unwrap();
            let (first, rest) = plan.waves(|n| u8::from(*n != local));
            assert_eq!(first[0], local);
            assert_eq!(plan.shortfall(&first), None, "{first:?}");
            assert_eq!(first.len() + rest.len(), 4);
            // Without its last node the wave falls short.
            assert!(plan.shortfall(&first[..first.len() - 1]).is_some());
        }
    }

    #[test]
    fn until_every_member_left_the_previous_ring_a_read_needs_r_of_its_replicas_too() {
        let plan = joint_read_plan();
        assert_eq!(plan.nodes().count(), 4);
        assert_eq!(plan.set_hashes().len(), 2);
        // d and a answered: one of each set, short in both.
        assert_eq!(plan.shortfall(&ids(&["d:1", "a:1"])), Some((2, 1)));
        assert_eq!(plan.shortfall(&ids(&["d:1", "b:1"])), Some((2, 1)));
        assert_eq!(plan.shortfall(&ids(&["d:1", "b:1", "a:1"])), None);
        assert_eq!(plan.shortfall(&ids(&["b:1", "c:1"])), None);
    }

    /// Three members in zones z0..z2, three more joining (one per zone),
    /// the first of which turns normal: a write on the older ring, acked by
    /// any nodes that meet its plan, is seen by any read on the newer ring
    /// that meets its plan, and the other way round. Reading only the
    /// newer ring's replicas does miss some.
    #[test]
    fn reads_and_writes_on_rings_a_member_apart_always_meet() {
        use crate::ring::{Member, MemberState, Token};
        let member = |i: u64, state| Member {
            id: NodeId::parse(&format!("n{i}:1")).unwrap(),
            zone: format!("z{}", i % 3),
            state,
            live: true,
            tokens: (0..8)
                .map(|t| Token(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t << 56)))
                .collect(),
        };
        let ring = |joined: u64| {
            let members: Vec<Member> = (0..6)
                .map(|i| {
                    let state = if i < 3 + joined {
                        MemberState::Normal
                    } else {
                        MemberState::Joining
                    };
                    member(i, state)
                })
                .collect();
            Ring::new(members, 3)
        };
        let (older, newer) = (ring(0), ring(1));
        let nodes: Vec<NodeId> = older.members().map(|m| m.id.clone()).collect();
        let subsets: Vec<Vec<NodeId>> = (0u32..1 << nodes.len())
            .map(|bits| {
                let mut set = nodes.clone();
                let mut i = 0;
                set.retain(|_| {
                    i += 1;
                    bits & (1 << (i - 1)) != 0
                });
                set
            })
            .collect();
        let meets = |write: &WritePlan, read: &ReadPlan| {
            subsets
                .iter()
                .filter(|acked| write.satisfied(*acked))
                .all(|acked| {
                    subsets
                        .iter()
                        .filter(|answered| read.shortfall(answered).is_none())
                        .all(|answered| answered.iter().any(|n| acked.contains(n)))
                })
        };
        let mut missed_without_the_agreed_ring = 0;
        for k in 0..200 {
            let key = format!("key{k}");
            let key = key.as_bytes();
            let m = Quorum::Majority;
            // A writer still on the older ring, a reader on the newer one
            // (which it has not yet seen every member on).
            let write = WritePlan::new(&older, &older, key, m).unwrap();
            let read = ReadPlan::new(&newer, Some(&older), key, m).unwrap();
            assert!(meets(&write, &read), "key{k}");
            if !meets(&write, &ReadPlan::new(&newer, None, key, m).unwrap()) {
                missed_without_the_agreed_ring += 1;
            }
            // The other way round.
            let write = WritePlan::new(&newer, &older, key, m).unwrap();
            let read = ReadPlan::new(&older, Some(&older), key, m).unwrap();
            assert!(meets(&write, &read), "key{k}");
        }
        assert!(missed_without_the_agreed_ring > 0);
    }

    #[test]
    fn a_previous_ring_with_fewer_members_than_n_needs_all_its_replicas() {
        let members = |n: usize| {
            (0..n)
                .map(|i| crate::ring::Member {
                    id: NodeId::parse(&format!("n{i}:1")).unwrap(),
                    zone: String::new(),
                    state: crate::ring::MemberState::Normal,
                    live: true,
                    tokens: vec![crate::ring::Token((i as u64 + 1) << 60)],
                })
                .collect::<Vec<_>>()
        };
        let (founder, three) = (Ring::new(members(1), 3), Ring::new(members(3), 3));
        let plan = WritePlan::new(&three, &founder, b"k", Quorum::Majority).unwrap();
        assert_eq!((plan.previous.len(), plan.previous_needed), (1, 1));
        assert!(plan.satisfied(&ids(&["n0:1", "n1:1"])));
    }

    /// N = 2 on n0..n2, then n1 left: until the last member is seen on
    /// the ring without n1, the older ring's sets still name it, but
    /// nothing waits for it.
    #[test]
    fn a_member_that_left_is_not_asked_for_what_it_no_longer_holds() {
        use crate::ring::{Member, MemberState, Token};
        let ring = |left: bool| {
            let members = (0..3u64).map(|i| Member {
                id: NodeId::parse(&format!("n{i}:1")).unwrap(),
                zone: String::new(),
                state: if left && i == 1 {
                    MemberState::Removed
                } else {
                    MemberState::Normal
                },
                live: !(left && i == 1),
                tokens: (0..8)
                    .map(|t| Token(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t << 56)))
                    .collect(),
            });
            Ring::new(members, 2)
        };
        let (older, newer) = (ring(false), ring(true));
        let leaver = NodeId::parse("n1:1").unwrap();
        let mut checked = 0;
        for k in 0..100 {
            let key = format!("key{k}");
            let key = key.as_bytes();
            if !older.nodes_of(key).contains(&leaver) {
                continue;
            }
            checked += 1;
            let now = newer.nodes_of(key);
            let read = ReadPlan::new(&newer, Some(&older), key, Quorum::All).unwrap();
            assert!(read.nodes().all(|n| *n != leaver), "key{k}");
            assert_eq!(read.shortfall(&now), None, "key{k}");
            assert_eq!(
                read.set_hashes().len(),
                2,
                "the fence still names both sets"
            );
            let mut write = WritePlan::new(&newer, &older, key, Quorum::All).unwrap();
            assert!(write.nodes().all(|n| *n != leaver), "key{k}");
            assert!(write.satisfied(&now), "key{k}");
            // A lagging replica asking for the older set changes nothing
            // the remaining nodes cannot give.
            write.require(older.nodes_of(key), 2);
            assert!(write.satisfied(&now), "key{k}");
        }
        assert!(checked > 0);
    }

    #[test]
    fn outside_a_transition_the_plan_is_w_of_n() {
        let plan = WritePlan {
            replicas: ids(&["a:1", "b:1", "c:1"]),
            pending: Vec::new(),
            target: ids(&["a:1", "b:1", "c:1"]),
            previous: Vec::new(),
            needed: 2,
            target_needed: 2,
            previous_needed: 2,
            also: Vec::new(),
            gone: Vec::new(),
        };
        assert!(plan.satisfied(&ids(&["b:1", "c:1"])));
        assert!(!plan.satisfied(&ids(&["b:1"])));
    }
}
