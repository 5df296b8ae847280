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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

/// Virtual nodes per node when `--tokens` is not given.
pub const DEFAULT_TOKENS_PER_NODE: usize = 16;

/// A node's identity: the `host:port` peers use to reach it (F1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Parses and checks a `host:port` identity.
    pub fn parse(s: &str) -> Result<NodeId> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| Error::invalid(format!("node {s:?} is not host:port")))?;
        if host.is_empty() {
            return Err(Error::invalid(format!("node {s:?} has an empty host")));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| Error::invalid(format!("node {s:?} has an invalid port")))?;
        if port == 0 {
            return Err(Error::invalid(format!("node {s:?} has port 0")));
        }
        Ok(NodeId(s.to_string()))
    }

    /// The identity as `host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The port part.
    pub fn port(&self) -> u16 {
        self.0
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// A stable 64-bit hash, used as the writer id in versions.
    pub fn hash64(&self) -> u64 {
        xxh3_64(self.0.as_bytes())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position on the ring (the 64-bit hash space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Token(pub u64);

impl Token {
    /// The token a key hashes to.
    pub fn of_key(key: &[u8]) -> Token {
        Token(xxh3_64(key))
    }
}

/// A member's place in its lifecycle (F7), as it announces it; whether it is
/// up is separate ([`Member::live`]), and [`Member::shown_state`] combines
/// the two into what `/ring` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Announced, streaming its ranges; writes reach it, reads do not yet.
    Joining,
    /// Serving its ranges.
    Normal,
    /// Handing its ranges over before it exits (or being removed while
    /// down); still serves them until the handover is done.
    Leaving,
    /// Suspected by the failure detector; only ever shown, never announced.
    Down,
    /// Gone for good; owns nothing.
    Removed,
}

impl MemberState {
    /// The lowercase name used on the wire and in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Normal => "normal",
            MemberState::Leaving => "leaving",
            MemberState::Down => "down",
            MemberState::Removed => "removed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<MemberState> {
        Some(match s {
            "joining" => MemberState::Joining,
            "normal" => MemberState::Normal,
            "leaving" => MemberState::Leaving,
            "down" => MemberState::Down,
            "removed" => MemberState::Removed,
            _ => return None,
        })
    }

    /// Whether members in this state serve reads of their ranges now.
    pub fn owns_ranges(&self) -> bool {
        matches!(
            self,
            MemberState::Normal | MemberState::Leaving | MemberState::Down
        )
    }

    /// Whether members in this state own ranges once the transitions under
    /// way are over.
    fn will_own_ranges(&self) -> bool {
        matches!(
            self,
            MemberState::Normal | MemberState::Joining | MemberState::Down
        )
    }
}

/// One node as the ring sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its identity.
    pub id: NodeId,
    /// Its zone (`--zone`); empty when unset.
    pub zone: String,
    /// Its lifecycle state, as announced (never `Down`).
    pub state: MemberState,
    /// Whether the failure detector believes it is up.
    #[serde(default = "live_by_default")]
    pub live: bool,
    /// Its virtual-node positions, sorted.
    pub tokens: Vec<Token>,
}

fn live_by_default() -> bool {
    true
}

impl Member {
    /// The state to show: `Down` for a member that is not up (unless removed).
    pub fn shown_state(&self) -> MemberState {
        match (self.live, self.state) {
            (_, MemberState::Removed) => MemberState::Removed,
            (false, _) => MemberState::Down,
            (true, state) => state,
        }
    }
}

/// A half-open arc of the ring, `(start, end]`, wrapping past `u64::MAX`;
/// `start == end` is the whole ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenRange {
    /// Exclusive start.
    pub start: Token,
    /// Inclusive end.
    pub end: Token,
}

impl TokenRange {
    /// Whether `token` lies in the range.
    pub fn contains(&self, token: Token) -> bool {
        let (s, e, t) = (self.start.0, self.end.0, token.0);
        match s.cmp(&e) {
            std::cmp::Ordering::Less => s < t && t <= e,
            std::cmp::Ordering::Greater => t > s || t <= e,
            std::cmp::Ordering::Equal => true,
        }
    }
}

/// One node's part of a transition: the ranges it gains and the nodes that
/// hold them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    /// The range, `(start, end]`.
    pub range: TokenRange,
    /// The node that will own it and must receive it.
    pub gainer: NodeId,
    /// Its current replicas, in preference order.
    pub sources: Vec<NodeId>,
}

/// Where keys go for one set of owners and one replication factor.
#[derive(Debug, Clone)]
struct Placement {
    /// Replication factor N.
    replicas: usize,
    /// Every owned token with the index of its member in `owners`, sorted by token.
    points: Vec<(Token, u32)>,
    /// Members that own ranges, indexed by `points` (shared: trial
    /// placements differing by a token share it).
    owners: Arc<Vec<NodeId>>,
    /// Zone of each entry in `owners`.
    owner_zones: Arc<Vec<u32>>,
    /// Number of distinct zones among owners.
    zone_count: usize,
}

impl Placement {
    fn new<'a>(owning: impl Iterator<Item = &'a Member>, replicas: usize) -> Placement {
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
    fn with_point(&self, token: Token, owner: u32) -> Placement {
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

    fn owner_index(&self, id: &NodeId) -> Option<u32> {
        self.owners.iter().position(|o| o == id).map(|i| i as u32)
    }

    /// Each owner's share of replica copies, indexed like `owners`.
    fn loads(&self) -> Vec<f64> {
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

    fn nodes_of_token(&self, token: Token) -> Vec<NodeId> {
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

/// Tokens for `joining` (its id and zone; its tokens are ignored) entering
/// `ring`, chosen so that replica load stays even (F6).
///
/// Greedy, one token at a time, as Cassandra's replication-aware allocator
/// does in spirit: every range of the current ring (with the tokens picked so
/// far) is a candidate, split in its middle; the split kept is the one after
/// which the members' loads, counting replica copies and zones, are the most
/// even (least sum of squared deviations from the mean). The first node of a
/// ring spreads its tokens evenly. Deterministic for a given ring and id.
pub fn allocate_tokens(ring: &Ring, joining: &Member, count: usize) -> Vec<Token> {
    let replicas = ring.replicas();
    let others: Vec<Member> = ring
        .members()
        .filter(|m| m.id != joining.id && m.state.owns_ranges())
        .cloned()
        .collect();
    if others.is_empty() {
        let offset = joining.id.hash64();
        let step = u64::MAX / count.max(1) as u64;
        let mut tokens: Vec<Token> = (0..count as u64)
            .map(|i| Token(offset.wrapping_add(i.wrapping_mul(step))))
            .collect();
        tokens.sort();
        return tokens;
    }
    let salt = joining.id.hash64();
    // Placements with the joining member holding `tokens`, for N copies and
    // for primary ranges only.
    let bases = |tokens: &[Token]| {
        let member = Member {
            tokens: tokens.to_vec(),
            state: MemberState::Normal,
            ..joining.clone()
        };
        let owning = || others.iter().chain(std::iter::once(&member));
        (
            Placement::new(owning(), replicas),
            Placement::new(owning(), 1),
        )
    };
    // Replica load first; the primary ranges break ties (with fewer nodes
    // than N every split gives equal replica loads). A trial adds one token
    // to prebuilt placements: this runs thousands of times per join.
    let score_with = |bases: &(Placement, Placement), me: u32, token: Token| {
        imbalance(&bases.0.with_point(token, me))
            + PRIMARY_WEIGHT * imbalance(&bases.1.with_point(token, me))
    };
    let mut chosen: Vec<Token> = Vec::with_capacity(count);
    for _ in 0..count {
        let current = bases(&chosen);
        let Some(me) = current.0.owner_index(&joining.id) else {
            break;
        };
        let mut best: Option<(f64, Token)> = None;
        for candidate in current.0.split_points(salt) {
            if chosen.contains(&candidate) {
                continue;
            }
            let score = score_with(&current, me, candidate);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, candidate));
            }
        }
        let Some((_, token)) = best else { break };
        chosen.push(token);
        chosen.sort();
    }
    // Refine: move each chosen token to a better split while that helps.
    for _ in 0..REFINE_PASSES {
        let mut improved = false;
        for i in 0..chosen.len() {
            let mut without = chosen.clone();
            let current_token = without.remove(i);
            let base = bases(&without);
            let Some(me) = base.0.owner_index(&joining.id) else {
                break;
            };
            let mut best = (score_with(&base, me, current_token), current_token);
            for candidate in base.0.split_points(salt) {
                if without.contains(&candidate) {
                    continue;
                }
                let score = score_with(&base, me, candidate);
                if score < best.0 {
                    best = (score, candidate);
                }
            }
            if best.1 != current_token {
                without.push(best.1);
                without.sort();
                chosen = without;
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
    chosen
}

/// Passes of the refinement that moves each new token to a better place.
const REFINE_PASSES: usize = 2;

/// Weight of primary-range balance next to replica-load balance when
/// choosing a token.
const PRIMARY_WEIGHT: f64 = 0.01;

/// Extra weight on the most loaded node's excess: the target is a bound on
/// the maximum (F6: at most 1.03x the mean on 10 nodes), which the sum of
/// squares alone left at 1.042 in `allocated_tokens_keep_ten_nodes_within_3_percent`;
/// with this term it measured 1.0245.
const PEAK_WEIGHT: f64 = 10.0;

/// How uneven the owners' load shares are: the sum of squared deviations
/// from the mean, plus the weighted square of the largest excess.
fn imbalance(placement: &Placement) -> f64 {
    let loads = placement.loads();
    let mean = 1.0 / loads.len().max(1) as f64;
    let squares: f64 = loads.iter().map(|l| (l - mean) * (l - mean)).sum();
    let peak = loads.iter().fold(0.0f64, |m, l| m.max(*l)) - mean;
    squares + PEAK_WEIGHT * peak * peak
}

impl Placement {
    /// Where a new token can go: each range split at a quarter, a half and
    /// three quarters of its width, each moved by up to 1/256 of the width by
    /// `salt` so that nodes joining at the same moment, seeing the same ring,
    /// do not choose the same tokens.
    fn split_points(&self, salt: u64) -> Vec<Token> {
        let points = &self.points;
        let n = points.len();
        let mut out = Vec::with_capacity(n * SPLITS.len());
        for i in 0..n {
            let start = points[(i + n - 1) % n].0.0;
            let end = points[i].0.0;
            let width = if n == 1 {
                u64::MAX
            } else {
                end.wrapping_sub(start)
            };
            let jitter = salt % (width / 256).max(1);
            for (num, den) in SPLITS {
                out.push(Token(
                    start.wrapping_add(width / den * num).wrapping_add(jitter),
                ));
            }
        }
        out
    }
}

/// Fractions of a range tried as new token positions.
const SPLITS: [(u64, u64); 3] = [(1, 4), (1, 2), (3, 4)];

/// Encodes tokens for gossip: hex, comma separated.
pub fn encode_tokens(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|t| format!("{:x}", t.0))
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes [`encode_tokens`]; a malformed list is an error, never a panic.
pub fn decode_tokens(s: &str) -> Result<Vec<Token>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut tokens = s
        .split(',')
        .map(|t| {
            u64::from_str_radix(t, 16)
                .map(Token)
                .map_err(|_| Error::invalid(format!("bad token {t:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    tokens.sort();
    Ok(tokens)
}

#[cfg(test)]
mod tests {
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
}
