//! Placement: which nodes hold a key or a range. A [`Placement`] is one set
//! of owners with one N; walking clockwise from a key's token, the replicas
//! are the first N distinct owners, zones not yet used first.
//!
//! Invariants: pure and deterministic, so every node with the same members
//! places every key alike; two owners claiming one token resolve to the
//! smaller id. `Ring`'s queries here read the natural placement for reads
//! and the target one for a transition's pending writes. Does not choose
//! tokens (`allocate.rs`) nor learn members (`membership/`).

use std::collections::BTreeMap;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::{Member, Movement, NodeId, Ring, Token, TokenRange};

/// Where keys go for one set of owners and one replication factor.
#[derive(Debug, Clone)]
pub(super) struct Placement {
    /// Replication factor N.
    pub(super) replicas: usize,
    /// Every owned token with the index of its member in `owners`, sorted by token.
    pub(super) points: Vec<(Token, u32)>,
    /// Members that own ranges, indexed by `points` (shared: trial
    /// placements differing by a token share it).
    pub(super) owners: Arc<Vec<NodeId>>,
    /// Zone of each entry in `owners`.
    pub(super) owner_zones: Arc<Vec<u32>>,
    /// Number of distinct zones among owners.
    pub(super) zone_count: usize,
}

impl Placement {
    pub(super) fn new<'a>(owning: impl Iterator<Item = &'a Member>, replicas: usize) -> Placement {
        let mut owners = Vec::new();
        let mut owner_zones = Vec::new();
        let mut zones: BTreeMap<&str, u32> = BTreeMap::new();
        let mut points = Vec::new();
        for member in owning {
            let index = owners.len() as u32;
            owners.push(member.id.clone());
            let next_zone = zones.len() as u32;
            owner_zones.push(*zones.entry(member.zone.as_str()).or_insert(next_zone));
            points.extend(member.tokens.iter().map(|t| (*t, index)));
        }
        // Two members claiming one token: the smaller id wins, on every node alike.
        points.sort();
        points.dedup_by_key(|(t, _)| *t);
        Placement {
            replicas,
            zone_count: zones.len(),
            points,
            owners: Arc::new(owners),
            owner_zones: Arc::new(owner_zones),
        }
    }

    /// This placement with one more token, owned by `owners[owner]`.
    pub(super) fn with_point(&self, token: Token, owner: u32) -> Placement {
        let mut points = Vec::with_capacity(self.points.len() + 1);
        let at = self.points.partition_point(|(t, _)| *t < token);
        points.extend_from_slice(&self.points[..at]);
        if self.points.get(at).is_none_or(|(t, _)| *t != token) {
            points.push((token, owner));
        }
        points.extend_from_slice(&self.points[at..]);
        Placement {
            replicas: self.replicas,
            points,
            owners: self.owners.clone(),
            owner_zones: self.owner_zones.clone(),
            zone_count: self.zone_count,
        }
    }

    pub(super) fn owner_index(&self, id: &NodeId) -> Option<u32> {
        self.owners.iter().position(|o| o == id).map(|i| i as u32)
    }

    /// Each owner's share of replica copies, indexed like `owners`.
    pub(super) fn loads(&self) -> Vec<f64> {
        let mut load = vec![0.0; self.owners.len()];
        let n = self.points.len();
        if n == 0 {
            return load;
        }
        let copies = self.replicas.min(self.owners.len()) as f64;
        let mut walk = Walk::default();
        for i in 0..n {
            let start = self.points[(i + n - 1) % n].0.0;
            let end = self.points[i].0.0;
            let width = if n == 1 {
                u64::MAX as f64
            } else {
                end.wrapping_sub(start) as f64
            };
            self.owners_from(i, &mut walk);
            for owner in &walk.out {
                load[*owner] += width / (u64::MAX as f64 * copies);
            }
        }
        load
    }

    pub(super) fn nodes_of_token(&self, token: Token) -> Vec<NodeId> {
        self.owner_indexes_of_token(token)
            .into_iter()
            .map(|i| self.owners[i].clone())
            .collect()
    }

    fn owner_indexes_of_token(&self, token: Token) -> Vec<usize> {
        let start = self.points.partition_point(|(t, _)| *t < token);
        let mut walk = Walk::default();
        self.owners_from(start, &mut walk);
        walk.out
    }

    /// The replicas of the range ending at `points[start]` (or the first
    /// point after a token), into `walk.out`; `walk`'s buffers are reused so
    /// that scoring thousands of placements allocates nothing per range.
    fn owners_from(&self, start: usize, walk: &mut Walk) {
        walk.clear();
        let want = self.replicas.min(self.owners.len());
        if want == 0 || self.points.is_empty() {
            return;
        }
        let zones_wanted = want.min(self.zone_count);
        for step in 0..self.points.len() {
            let (_, owner) = self.points[(start + step) % self.points.len()];
            let owner = owner as usize;
            if walk.seen.contains(&owner) {
                continue;
            }
            // N is small: vectors beat hash sets here.
            let zone = self.owner_zones[owner];
            let new_zone = walk.zones.len() < zones_wanted && !walk.zones.contains(&zone);
            if new_zone {
                walk.zones.push(zone);
            }
            walk.seen.push(owner);
            walk.by_zone.push(new_zone);
            if walk.zones.len() == zones_wanted && walk.seen.len() >= want {
                break;
            }
        }
        // Zone-first picks, then the rest in walk order; reported in walk order.
        let mut fill = want - walk.zones.len();
        for (owner, by_zone) in walk.seen.iter().zip(&walk.by_zone) {
            if *by_zone {
                walk.out.push(*owner);
            } else if fill > 0 {
                fill -= 1;
                walk.out.push(*owner);
            }
        }
    }
}

/// Scratch buffers of [`Placement::owners_from`].
#[derive(Default)]
struct Walk {
    seen: Vec<usize>,
    by_zone: Vec<bool>,
    zones: Vec<u32>,
    out: Vec<usize>,
}

impl Walk {
    fn clear(&mut self) {
        self.seen.clear();
        self.by_zone.clear();
        self.zones.clear();
        self.out.clear();
    }
}

impl Ring {
    /// The replicas of `key`, in preference order (F6, F9).
    pub fn nodes_of(&self, key: &[u8]) -> Vec<NodeId> {
        self.nodes_of_token(Token::of_key(key))
    }

    /// The replicas of the range that holds `token`, in preference order.
    pub fn nodes_of_token(&self, token: Token) -> Vec<NodeId> {
        self.natural.nodes_of_token(token)
    }

    /// The range of the natural placement that holds `token`: (the point
    /// before it, the first point at or after it]; `None` on an empty ring.
    pub fn range_of_token(&self, token: Token) -> Option<TokenRange> {
        let points = &self.natural.points;
        if points.is_empty() {
            return None;
        }
        let at = points.partition_point(|(t, _)| *t < token) % points.len();
        let before = (at + points.len() - 1) % points.len();
        Some(TokenRange {
            start: points[before].0,
            end: points[at].0,
        })
    }

    /// The nodes a write of `key` goes to besides its replicas: those that
    /// will be replicas when the transition under way is over.
    pub fn pending_of(&self, key: &[u8]) -> Vec<NodeId> {
        let Some(target) = &self.target else {
            return Vec::new();
        };
        let token = Token::of_key(key);
        let natural = self.natural.nodes_of_token(token);
        target
            .nodes_of_token(token)
            .into_iter()
            .filter(|n| !natural.contains(n))
            .collect()
    }

    /// The replicas of `key` once the transition under way is over.
    pub fn target_nodes_of(&self, key: &[u8]) -> Vec<NodeId> {
        let token = Token::of_key(key);
        self.target
            .as_ref()
            .unwrap_or(&self.natural)
            .nodes_of_token(token)
    }

    /// What the transition under way moves: every range some node gains,
    /// with its current replicas. Empty when no transition is under way.
    pub fn movements(&self) -> Vec<Movement> {
        let Some(target) = &self.target else {
            return Vec::new();
        };
        // Every boundary of either placement starts a range whose replicas
        // are the same throughout in both.
        let mut bounds: Vec<Token> = self
            .natural
            .points
            .iter()
            .chain(&target.points)
            .map(|(t, _)| *t)
            .collect();
        bounds.sort();
        bounds.dedup();
        let mut out: Vec<Movement> = Vec::new();
        let n = bounds.len();
        for i in 0..n {
            let range = TokenRange {
                start: bounds[(i + n - 1) % n],
                end: bounds[i],
            };
            let sources = self.natural.nodes_of_token(range.end);
            for gainer in target.nodes_of_token(range.end) {
                if sources.contains(&gainer) {
                    continue;
                }
                out.push(Movement {
                    range,
                    gainer,
                    sources: sources.clone(),
                });
            }
        }
        out
    }

    /// The ranges `node` is a current replica of, each with all its
    /// current replicas (adjacent ranges with the same replicas merged).
    pub fn ranges_of(&self, node: &NodeId) -> Vec<(TokenRange, Vec<NodeId>)> {
        let points = &self.natural.points;
        let n = points.len();
        let mut out: Vec<(TokenRange, Vec<NodeId>)> = Vec::new();
        for i in 0..n {
            let range = TokenRange {
                start: points[(i + n - 1) % n].0,
                end: points[i].0,
            };
            let replicas = self.natural.nodes_of_token(range.end);
            if !replicas.contains(node) {
                continue;
            }
            match out.last_mut() {
                Some((last, r)) if *r == replicas && last.end == range.start => {
                    last.end = range.end;
                }
                _ => out.push((range, replicas)),
            }
        }
        out
    }

    /// Each owner's share of replica copies: the fraction of the hash space it
    /// holds a replica of, divided by N, so the shares of all nodes sum to 1.
    pub fn load_shares(&self) -> BTreeMap<NodeId, f64> {
        let placement = &self.natural;
        placement
            .owners
            .iter()
            .cloned()
            .zip(placement.loads())
            .filter(|(_, load)| *load > 0.0)
            .collect()
    }
}

/// A hash of a set of replicas, order aside: two rings that give a key the
/// same replicas give the same hash, so a replica can tell whether a
/// request was planned on a ring that places the key elsewhere
/// (ring-version fencing).
pub fn replica_set_hash(nodes: &[NodeId]) -> u64 {
    let mut set: Vec<&str> = nodes.iter().map(|n| n.as_str()).collect();
    set.sort_unstable();
    let mut bytes = Vec::new();
    for node in set {
        bytes.extend_from_slice(node.as_bytes());
        bytes.push(0);
    }
    xxh3_64(&bytes)
}
