//! Quorum sizes: per request `?w=` / `?r=` as a count or `all`; the
//! default is a majority of N. [`WritePlan`]: which nodes a write goes to
//! and which sets of acknowledgements make it succeed, during a ring
//! transition too.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ring::{NodeId, Ring, replica_set_hash};

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
}

impl WritePlan {
    /// The plan for `key` on `ring` with write quorum `w`; `agreed` is the
    /// last ring every member was seen on.
    pub fn new(ring: &Ring, agreed: &Ring, key: &[u8], w: Quorum) -> Result<WritePlan> {
        let replicas = ring.nodes_of(key);
        let pending = ring.pending_of(key);
        let target = ring.target_nodes_of(key);
        let mut previous = agreed.nodes_of(key);
        let same =
            |a: &[NodeId], b: &[NodeId]| a.len() == b.len() && a.iter().all(|n| b.contains(n));
        if same(&previous, &replicas) || same(&previous, &target) {
            previous.clear();
        }
        Ok(WritePlan {
            needed: w.count(ring.replicas())?,
            target_needed: w.count_clamped(ring.target_replicas()),
            // A ring with fewer members than N gave the key fewer
            // replicas: all of them then (a reader there could not read
            // more).
            previous_needed: w.count_clamped(agreed.replicas()).min(previous.len()),
            replicas,
            pending,
            target,
            previous,
        })
    }

    /// Every node the write is sent to: the replicas, then the pending
    /// ones, then those of the previous ring that are neither.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        let extra = self
            .previous
            .iter()
            .filter(|n| !self.replicas.contains(n) && !self.pending.contains(n));
        self.replicas.iter().chain(&self.pending).chain(extra)
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
        sets.dedup();
        sets
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
        } else {
            (self.previous_needed, count(&self.previous))
        }
    }
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
    fn joining_plan() -> WritePlan {
        WritePlan {
            replicas: ids(&["a:1", "b:1", "c:1"]),
            pending: ids(&["d:1"]),
            target: ids(&["a:1", "b:1", "d:1"]),
            previous: Vec::new(),
            needed: 2,
            target_needed: 2,
            previous_needed: 2,
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
        };
        assert_eq!(plan.nodes().count(), 4);
        assert!(!plan.satisfied(&ids(&["b:1", "d:1"])));
        assert!(plan.satisfied(&ids(&["b:1", "d:1", "c:1"])));
        assert!(plan.satisfied(&ids(&["a:1", "b:1"])));
        assert_eq!(plan.set_hashes().len(), 2);
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
        };
        assert!(plan.satisfied(&ids(&["b:1", "c:1"])));
        assert!(!plan.satisfied(&ids(&["b:1"])));
    }
}
