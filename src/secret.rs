//! The cluster secret (F27): how it is made (`ringkv secret`), read
//! (`--cluster-secret-file`, `RINGKV_CLUSTER_SECRET`) and turned into the
//! keys of gossip and RPC, and how refused packets and handshakes are
//! counted and logged. The sealing itself is in `membership/sealed.rs`
//! (gossip) and `rpc/noise.rs` (node-to-node calls).
//!
//! A secret is at least [`MIN_SECRET_BYTES`] random bytes, given as hex
//! (what `ringkv secret` prints) or raw. Each use gets its own key, derived
//! with blake3's key derivation mode under a context string naming it, so
//! the gossip key and the RPC key are unrelated and neither is the secret.
//! During a rotation a node holds a second secret (`--cluster-secret-file-next`),
//! whose keys it accepts but never sends with.
//!
//! Invariants: no key or secret byte appears in a log, an error or a
//! `Debug` print; a refusal is logged at most once a minute per peer
//! address and channel, and always counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::TryRngCore;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Fewest bytes of a secret: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;
/// Largest secret file read.
const MAX_SECRET_FILE_BYTES: u64 = 4096;
/// blake3 `derive_key` context of the gossip packet key.
const GOSSIP_CONTEXT: &str = "ringkv 2026-12 gossip packet key (XChaCha20-Poly1305) v1";
/// blake3 `derive_key` context of the RPC pre-shared key.
const RPC_CONTEXT: &str = "ringkv 2026-12 rpc Noise NNpsk0 pre-shared key v1";
/// How long a refusal from one peer keeps further ones out of the log.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Peers remembered by the log limiter; past that it starts afresh.
const LOG_PEERS: usize = 4096;

/// A new secret from the operating system's generator, as 64 hex digits.
pub fn generate_hex() -> Result<String> {
    let mut bytes = [0u8; MIN_SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::internal(format!("no random bytes: {e}")))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret as given in the environment; never printed.
#[derive(Clone)]
pub struct SecretText(pub Vec<u8>);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(redacted)")
    }
}

/// The keys one secret gives.
#[derive(Clone)]
pub struct Keys {
    /// XChaCha20-Poly1305 key of gossip packets.
    pub gossip: [u8; 32],
    /// Noise pre-shared key of RPC connections.
    pub rpc: [u8; 32],
    /// A short fingerprint (not secret: a hash of a key) to tell secrets
    /// apart in logs.
    pub fingerprint: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(fingerprint {})", self.fingerprint)
    }
}

impl Keys {
    /// The keys of `secret` (its bytes, hex decoded already).
    pub fn derive(secret: &[u8]) -> Result<Keys> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(Error::invalid(format!(
                "the cluster secret has {} bytes; it needs at least {MIN_SECRET_BYTES} random bytes (`ringkv secret` prints one)",
                secret.len()
            )));
        }
        let gossip = blake3::derive_key(GOSSIP_CONTEXT, secret);
        let rpc = blake3::derive_key(RPC_CONTEXT, secret);
        let fingerprint = hex(&blake3::hash(&gossip).as_bytes()[..4]);
        Ok(Keys {
            gossip,
            rpc,
            fingerprint,
        })
    }

    /// The keys of a secret as written in a file or the environment: hex
    /// (64 digits or more, surrounding whitespace ignored) or raw bytes.
    pub fn from_text(text: &[u8]) -> Result<Keys> {
        let trimmed = text.trim_ascii();
        let is_hex = trimmed.len() >= 2 * MIN_SECRET_BYTES
            && trimmed.len().is_multiple_of(2)
            && trimmed.iter().all(u8::is_ascii_hexdigit);
        if is_hex {
            let decoded: Vec<u8> = trimmed
                .chunks(2)
                .map(|pair| {
                    let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                    digit(pair[0]) << 4 | digit(pair[1])
                })
                .collect();
            return Keys::derive(&decoded);
        }
        Keys::derive(trimmed)
    }

    /// The keys of the secret in file `path`.
    pub fn from_file(path: &Path) -> Result<Keys> {
        let named = |e: std::io::Error| Error::Io {
            source: std::io::Error::new(
                e.kind(),
                format!("cluster secret file {}: {e}", path.display()),
            ),
        };
        let size = std::fs::metadata(path).map_err(named)?.len();
        if size > MAX_SECRET_FILE_BYTES {
            return Err(Error::invalid(format!(
                "cluster secret file {} is larger than {MAX_SECRET_FILE_BYTES} bytes",
                path.display()
            )));
        }
        let text = std::fs::read(path).map_err(named)?;
        Keys::from_text(&text).map_err(|e| match e {
            Error::InvalidInput { reason } => {
                Error::invalid(format!("cluster secret file {}: {reason}", path.display()))
            }
            other => other,
        })
    }
}

/// The secrets a node holds: the one it sends with, and during a rotation
/// a second one it also accepts.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Sent with and accepted.
    pub current: Keys,
    /// Accepted too (`--cluster-secret-file-next`), never sent with.
    pub next: Option<Keys>,
}

impl Secrets {
    /// The keys accepted, the current ones first.
    pub fn accepted(&self) -> impl Iterator<Item = &Keys> {
        std::iter::once(&self.current).chain(self.next.as_ref())
    }
}

/// Nonces of messages accepted recently, to refuse a second delivery: a
/// message is accepted only within `window_ms` of its send time, and its
/// nonce is kept for twice that, after which its time is out of the
/// window anyway. Bounded: past `max` nonces the oldest go first.
pub struct ReplayCache<const N: usize> {
    /// Nonces held.
    seen: std::collections::HashSet<[u8; N]>,
    /// The same, in arrival order, with when each may go.
    order: std::collections::VecDeque<([u8; N], u64)>,
    /// The window either side of a message's send time, ms.
    window_ms: u64,
    /// Most nonces held.
    max: usize,
}

impl<const N: usize> ReplayCache<N> {
    /// An empty cache.
    pub fn new(window_ms: u64, max: usize) -> Self {
        ReplayCache {
            seen: Default::default(),
            order: Default::default(),
            window_ms,
            max,
        }
    }

    /// Accepts a message sent at `sent_at_ms` with `nonce`, at `now_ms`
    /// (ms since the Unix epoch), or says why not.
    pub fn accept(&mut self, nonce: [u8; N], sent_at_ms: u64, now_ms: u64) -> Result<(), Refused> {
        if now_ms.abs_diff(sent_at_ms) > self.window_ms {
            return Err(Refused::Stale);
        }
        while let Some((old, until)) = self.order.front() {
            if *until > now_ms {
                break;
            }
            self.seen.remove(old);
            self.order.pop_front();
        }
        if !self.seen.insert(nonce) {
            return Err(Refused::Replay);
        }
        self.order
            .push_back((nonce, now_ms.saturating_add(2 * self.window_ms)));
        if self.order.len() > self.max
            && let Some((old, _)) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        Ok(())
    }

    /// How many nonces it holds.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which node-to-node channel refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A gossip packet (UDP).
    Gossip,
    /// An RPC connection or call (TCP).
    Rpc,
}

impl Channel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Gossip => "gossip",
            Channel::Rpc => "rpc",
        }
    }
}

/// Why a packet or a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// Not sealed at all: a node without a secret, or a stray packet; or
    /// a call without a handshake (gRPC on the public path).
    Unsealed,
    /// Sealed with a key this node does not hold (another secret), or
    /// changed on the way.
    BadKey,
    /// Sent longer ago (or further ahead) than the replay window allows.
    Stale,
    /// Seen before: a replay.
    Replay,
    /// Well sealed, but not a message this node can read.
    Malformed,
}

impl Refused {
    /// Every reason, for series created at zero.
    pub const ALL: [Refused; 5] = [
        Refused::Unsealed,
        Refused::BadKey,
        Refused::Stale,
        Refused::Replay,
        Refused::Malformed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Unsealed => "unsealed",
            Refused::BadKey => "bad_key",
            Refused::Stale => "stale",
            Refused::Replay => "replay",
            Refused::Malformed => "malformed",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Refused::Unsealed => "it was not sealed: a node started without the cluster secret?",
            Refused::BadKey => {
                "it was sealed with another secret: a node of another cluster, or one not yet given the rotated secret?"
            }
            Refused::Stale => {
                "it was sent outside the replay window: a replay, or the peer's clock is off by more than 30 s"
            }
            Refused::Replay => "it was received before: a replay",
            Refused::Malformed => "it did not decode",
        }
    }
}

/// What the refusal log limiter tells apart.
type LogKey = (SocketAddr, Channel, Refused);

/// Counts refusals (`ringkv_cluster_rejections_total`) and logs them, once
/// a minute per peer address and channel. Cheap to clone.
#[derive(Clone)]
pub struct Rejections {
    /// Where the counts go.
    metrics: Metrics,
    /// When each (peer, channel, reason) was last logged, and refusals
    /// since; a std mutex held only to look up and update.
    logged: Arc<Mutex<HashMap<LogKey, (Instant, u64)>>>,
}

impl Rejections {
    /// Refusals counted in `metrics`.
    pub fn new(metrics: Metrics) -> Rejections {
        Rejections {
            metrics,
            logged: Arc::default(),
        }
    }

    /// Counts one refusal from `peer`, and logs it unless that peer's
    /// refusals on `channel` for `reason` were logged within the last
    /// minute. A gossip peer is its address (its gossip port is its
    /// identity); an RPC peer its IP (connections come from any port).
    pub fn refused(&self, channel: Channel, reason: Refused, peer: SocketAddr) {
        let peer = match channel {
            Channel::Gossip => peer,
            Channel::Rpc => SocketAddr::new(peer.ip(), 0),
        };
        self.metrics
            .cluster_rejected(channel.as_str(), reason.as_str());
        let now = Instant::now();
        let suppressed = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            if logged.len() >= LOG_PEERS {
                logged.clear();
            }
            match logged.get_mut(&(peer, channel, reason)) {
                Some((at, count)) if now.duration_since(*at) < LOG_EVERY => {
                    *count += 1;
                    return;
                }
                Some((at, count)) => {
                    let before = *count;
                    (*at, *count) = (now, 0);
                    before
                }
                None => {
                    logged.insert((peer, channel, reason), (now, 0));
                    0
                }
            }
        };
        let peer = match channel {
            Channel::Gossip => peer.to_string(),
            Channel::Rpc => peer.ip().to_string(),
        };
        tracing::warn!(
            %peer,
            channel = channel.as_str(),
            reason = reason.as_str(),
            suppressed,
            "refused a node-to-node {}: {} (logged once a minute per peer)",
            match channel {
                Channel::Gossip => "gossip packet",
                Channel::Rpc => "connection",
            },
            reason.hint()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_64_hex_digits_and_differ() {
        let (a, b) = (generate_hex().unwrap(), generate_hex().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn hex_and_raw_secrets_and_their_keys() {
        let secret = generate_hex().unwrap();
        let from_hex = Keys::from_text(format!("  {secret}\n").as_bytes()).unwrap();
        let upper = Keys::from_text(secret.to_uppercase().as_bytes()).unwrap();
        assert_eq!(from_hex.gossip, upper.gossip);
        assert_ne!(from_hex.gossip, from_hex.rpc);
        // The same text taken raw would be another secret: hex is decoded.
        let raw = Keys::derive(secret.as_bytes()).unwrap();
        assert_ne!(raw.gossip, from_hex.gossip);
        let raw_bytes = [7u8; 40];
        assert!(Keys::from_text(&raw_bytes).is_ok());
        let err = Keys::from_text(b"short").unwrap_err().to_string();
        assert!(err.contains("at least 32"), "{err}");
        assert!(!format!("{from_hex:?}").contains(&secret[..8]));
    }
}
