//! The ring's vocabulary: tokens, member states, members, token ranges and
//! movements, and the gossip form of a token list; node ids are
//! [`crate::node_id`]'s, re-exported here.
//!
//! Invariants: a key's [`Token`] is
//! the xxh3-64 of its bytes, the same on every node and every version; a
//! decoded token list is sorted and never panics on bad input. Does not
//! place anything: `placement.rs` does.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
pub use crate::node_id::NodeId;

/// Virtual nodes per node when `--tokens` is not given.
pub const DEFAULT_TOKENS_PER_NODE: usize = 16;

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
    pub(super) fn will_own_ranges(&self) -> bool {
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
