//! Token allocation for a joining node (F6): greedy, one token at a time,
//! each placed where the members' replica loads, zones counted, end the
//! most even.
//!
//! Invariants: deterministic for a given ring and joining id; nodes joining
//! at once, seeing one ring, pick different tokens (the split points are
//! salted by the id). Does not persist or publish tokens: `membership/`
//! does.

use super::placement::Placement;
use super::{Member, MemberState, Ring, Token};

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
    pub(super) fn split_points(&self, salt: u64) -> Vec<Token> {
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
