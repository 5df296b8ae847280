//! Hash trees over the ring for anti-entropy (F17). Pure: no I/O.
//!
//! The token space is cut into [`LEAVES`] equal leaves (the top
//! [`LEAF_BITS`] bits of a key's token). A leaf's hash is the XOR of the
//! hashes of its entries, an entry being `(key, version, tombstone)`, so a
//! store keeps every leaf up to date in O(1) per write (XOR out the old
//! entry, XOR in the new) instead of rebuilding a tree per repair. An inner
//! node's hash is the XOR of the leaves below it, so any level is computed
//! from the leaves alone.
//!
//! Two replicas of a ring range compare their trees top down: the hashes of
//! one level for the nodes that differed one level up, until the leaves;
//! only the keys of differing leaves are then listed and exchanged. What
//! moves grows with the number of differences, not with the data.
//!
//! XOR sets can collide (two differences cancelling) with probability about
//! 2^-64 per comparison: accepted, as in Riak's and Cassandra's trees.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::ring::{Token, TokenRange};
use crate::version::Version;

/// Bits of the token that pick a leaf.
pub const LEAF_BITS: u32 = 16;
/// Leaves of the tree.
pub const LEAVES: usize = 1 << LEAF_BITS;

/// The leaf a token falls in.
pub fn leaf_of(token: Token) -> usize {
    (token.0 >> (64 - LEAF_BITS)) as usize
}

/// The tokens of leaf `leaf`, as a range `(start, end]`.
pub fn leaf_span(leaf: usize) -> TokenRange {
    let width = 1u64 << (64 - LEAF_BITS);
    let first = leaf as u64 * width;
    TokenRange {
        start: Token(first.wrapping_sub(1)),
        end: Token(first + (width - 1)),
    }
}

/// Whether leaf `leaf` lies wholly inside `range`.
pub fn leaf_inside(leaf: usize, range: TokenRange) -> bool {
    if range.start == range.end {
        return true;
    }
    let span = leaf_span(leaf);
    let first = Token(span.start.0.wrapping_add(1));
    // Inside iff both ends are in the range and the range does not end
    // strictly inside the leaf.
    range.contains(first)
        && range.contains(span.end)
        && !(range.end.0 >= first.0 && range.end.0 < span.end.0)
}

/// The leaves a range touches, in ring order from its start (each once).
pub fn leaves_of(range: TokenRange) -> Vec<usize> {
    let first = leaf_of(Token(range.start.0.wrapping_add(1)));
    let last = leaf_of(range.end);
    // A range going all the way round (the whole ring, or one starting and
    // ending inside the same leaf the long way) touches every leaf.
    let all_round = range.start == range.end || (first == last && range.end.0 < range.start.0);
    let count = if all_round {
        LEAVES
    } else {
        (last + LEAVES - first) % LEAVES + 1
    };
    (0..count).map(|i| (first + i) % LEAVES).collect()
}

/// The hash of one entry. A version's expiry change (`touch`) counts only
/// when set, so that the hashes of records without one are those of data
/// dirs written before expiry existed. The expiry itself is not hashed: it
/// is set once per version.
pub fn entry_hash(key: &str, version: Version, deleted: bool) -> u64 {
    let mut bytes = Vec::with_capacity(key.len() + 25);
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&version.timestamp.to_be_bytes());
    bytes.extend_from_slice(&version.writer.to_be_bytes());
    bytes.push(u8::from(deleted));
    if version.touch != 0 {
        bytes.extend_from_slice(&version.touch.to_be_bytes());
    }
    xxh3_64(&bytes)
}

/// The leaves of one range as one replica holds it: leaf -> hash, empty
/// leaves (hash 0) left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafHashes(pub BTreeMap<usize, u64>);

impl LeafHashes {
    /// The hash of node `index` of level `level` (level [`LEAF_BITS`] is
    /// the leaves; level 0 the root).
    pub fn node(&self, level: u32, index: usize) -> u64 {
        let shift = LEAF_BITS - level;
        let first = index << shift;
        let last = ((index + 1) << shift) - 1;
        self.0
            .range(first..=last)
            .fold(0, |acc, (_, hash)| acc ^ hash)
    }
}

/// A top-down comparison of two trees, one round per level step: ask both
/// sides for the hashes of [`Descent::next_nodes`], hand them to
/// [`Descent::advance`], repeat until [`Descent::done`]; the differing
/// leaves are then [`Descent::differing`]. Each round resolves `fanout_bits`
/// bits of the leaf index (4: 16 children per differing node).
#[derive(Debug, Clone)]
pub struct Descent {
    fanout_bits: u32,
    /// Level of the nodes in `differing`.
    level: u32,
    /// Nodes of `level` whose hashes differ.
    differing: Vec<usize>,
    /// Hashes compared so far.
    pub compared: usize,
}

impl Descent {
    /// A comparison whose roots differ (compare the roots, level 0 node 0,
    /// first).
    pub fn new(fanout_bits: u32) -> Descent {
        Descent {
            fanout_bits: fanout_bits.clamp(1, LEAF_BITS),
            level: 0,
            differing: vec![0],
            compared: 1,
        }
    }

    /// Whether the leaves are reached or nothing differs any more.
    pub fn done(&self) -> bool {
        self.level == LEAF_BITS || self.differing.is_empty()
    }

    /// The level and nodes whose hashes the next round compares.
    pub fn next_nodes(&self) -> (u32, Vec<usize>) {
        let step = self.fanout_bits.min(LEAF_BITS - self.level);
        let nodes = self
            .differing
            .iter()
            .flat_map(|&i| (i << step)..((i + 1) << step))
            .collect();
        (self.level + step, nodes)
    }

    /// Keeps the nodes of the round whose hashes differ. `a` and `b` must
    /// hold one hash per node of `nodes`: a side that answered with more or
    /// fewer (a truncated or malformed reply) is an error, and the descent
    /// is left as it was.
    pub fn advance(
        &mut self,
        level: u32,
        nodes: Vec<usize>,
        a: &[u64],
        b: &[u64],
    ) -> Result<(), HashCountMismatch> {
        for got in [a.len(), b.len()] {
            if got != nodes.len() {
                return Err(HashCountMismatch {
                    asked: nodes.len(),
                    got,
                });
            }
        }
        self.compared += nodes.len();
        self.differing = nodes
            .into_iter()
            .zip(a.iter().zip(b))
            .filter(|(_, (x, y))| x != y)
            .map(|(i, _)| i)
            .collect();
        self.level = level;
        Ok(())
    }

    /// The differing leaves, once done.
    pub fn differing(&self) -> &[usize] {
        if self.level == LEAF_BITS {
            &self.differing
        } else {
            &[]
        }
    }
}

/// A side of a tree comparison answered with a different number of hashes
/// than nodes asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCountMismatch {
    /// Nodes whose hashes were asked.
    pub asked: usize,
    /// Hashes received.
    pub got: usize,
}

impl std::fmt::Display for HashCountMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tree hashes for {} nodes", self.got, self.asked)
    }
}

/// The leaves where two replicas differ, found top down with [`Descent`];
/// `hashes_a` and `hashes_b` answer a level and node indexes with those
/// nodes' hashes. Returns the differing leaves and how many hashes were
/// compared, or the first answer with the wrong number of hashes.
pub fn differing_leaves(
    fanout_bits: u32,
    mut hashes_a: impl FnMut(u32, &[usize]) -> Vec<u64>,
    mut hashes_b: impl FnMut(u32, &[usize]) -> Vec<u64>,
) -> Result<(Vec<usize>, usize), HashCountMismatch> {
    if hashes_a(0, &[0]) == hashes_b(0, &[0]) {
        return Ok((Vec::new(), 1));
    }
    let mut descent = Descent::new(fanout_bits);
    while !descent.done() {
        let (level, nodes) = descent.next_nodes();
        let (a, b) = (hashes_a(level, &nodes), hashes_b(level, &nodes));
        descent.advance(level, nodes, &a, &b)?;
    }
    Ok((descent.differing().to_vec(), descent.compared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version(ts: u64) -> Version {
        Version::new(ts, 1)
    }

    #[test]
    fn leaves_cover_the_ring_in_order() {
        assert_eq!(leaf_of(Token(0)), 0);
        assert_eq!(leaf_of(Token(u64::MAX)), LEAVES - 1);
        for leaf in [0, 1, 4242, LEAVES - 1] {
            let span = leaf_span(leaf);
            assert_eq!(leaf_of(span.end), leaf);
            assert_eq!(leaf_of(Token(span.start.0.wrapping_add(1))), leaf);
            assert!(leaf_inside(leaf, span));
        }
        let whole = TokenRange {
            start: Token(9),
            end: Token(9),
        };
        assert_eq!(leaves_of(whole).len(), LEAVES);
        let wrap = TokenRange {
            start: leaf_span(LEAVES - 2).end,
            end: leaf_span(1).end,
        };
        assert_eq!(leaves_of(wrap), vec![LEAVES - 1, 0, 1]);
        assert!(leaf_inside(0, wrap) && leaf_inside(LEAVES - 1, wrap));
        assert!(!leaf_inside(2, wrap));
        let partial = TokenRange {
            start: Token(leaf_span(3).end.0 - 10),
            end: Token(leaf_span(5).end.0 - 10),
        };
        assert_eq!(leaves_of(partial), vec![3, 4, 5]);
        assert!(!leaf_inside(3, partial) && leaf_inside(4, partial) && !leaf_inside(5, partial));
        let long_way = TokenRange {
            start: Token(leaf_span(7).end.0 - 5),
            end: Token(leaf_span(7).end.0 - 10),
        };
        assert_eq!(leaves_of(long_way).len(), LEAVES);
        assert!(!leaf_inside(7, long_way) && leaf_inside(8, long_way));
    }

    #[test]
    fn an_inner_node_is_the_xor_of_its_leaves() {
        let mut leaves = LeafHashes::default();
        leaves.0.insert(3, 0b0110);
        leaves.0.insert(4, 0b0011);
        leaves.0.insert(LEAVES - 1, 0b1000);
        assert_eq!(leaves.node(0, 0), 0b1101);
        assert_eq!(leaves.node(LEAF_BITS, 3), 0b0110);
        assert_eq!(leaves.node(LEAF_BITS - 1, 2), 0b0011);
        assert_eq!(leaves.node(1, 1), 0b1000);
    }

    #[test]
    fn a_side_answering_too_few_or_too_many_hashes_is_an_error() {
        let mut ours = LeafHashes::default();
        ours.0.insert(7, 1);
        for short_by in [1usize, 16] {
            let result = differing_leaves(
                4,
                |level, idx| idx.iter().map(|i| ours.node(level, *i)).collect(),
                |_, idx| vec![9; idx.len().saturating_sub(short_by)],
            );
            let asked = 16;
            assert_eq!(
                result,
                Err(HashCountMismatch {
                    asked,
                    got: asked - short_by
                })
            );
        }
        let mut descent = Descent::new(4);
        let (level, nodes) = descent.next_nodes();
        let ours = vec![0; nodes.len()];
        let too_many = vec![1; nodes.len() + 1];
        let before = descent.clone();
        assert!(descent.advance(level, nodes, &ours, &too_many).is_err());
        assert_eq!(descent.next_nodes(), before.next_nodes());
        // A root answer with no hash at all differs from ours: the first
        // round then meets the mismatch instead of indexing past the end.
        let result = differing_leaves(4, |_, idx| vec![0; idx.len()], |_, _| Vec::new());
        assert_eq!(result, Err(HashCountMismatch { asked: 16, got: 0 }));
    }

    proptest! {
        /// Exactly the leaves whose sets differ are found, comparing far
        /// fewer hashes than there are leaves when few differ.
        #[test]
        fn the_differing_leaves_and_only_those_are_found(
            keys in proptest::collection::btree_set(any::<u64>(), 0..300),
            changed in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let keys: Vec<u64> = keys.into_iter().collect();
            let mut a = LeafHashes::default();
            let mut b = LeafHashes::default();
            let mut expected = std::collections::BTreeSet::new();
            for (i, k) in keys.iter().enumerate() {
                let key = format!("k{k}");
                let leaf = leaf_of(Token(*k));
                let h = entry_hash(&key, version(1), false);
                *a.0.entry(leaf).or_default() ^= h;
                let newer = changed.iter().any(|c| c.index(keys.len()) == i);
                let hb = if newer { entry_hash(&key, version(2), false) } else { h };
                *b.0.entry(leaf).or_default() ^= hb;
                if newer {
                    expected.insert(leaf);
                }
            }
            let (found, compared) = differing_leaves(
                4,
                |level, idx| idx.iter().map(|i| a.node(level, *i)).collect(),
                |level, idx| idx.iter().map(|i| b.node(level, *i)).collect(),
            ).expect("both sides answer every node");
            prop_assert_eq!(found.into_iter().collect::<std::collections::BTreeSet<_>>(), expected.clone());
            prop_assert!(compared <= 1 + expected.len() * 16 * 4);
        }
    }
}
