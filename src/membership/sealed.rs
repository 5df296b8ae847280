//! Gossip packets sealed with the cluster secret (F27): a chitchat
//! [`Transport`] over UDP whose every datagram is encrypted and
//! authenticated with XChaCha20-Poly1305 under the secret's gossip key,
//! and carries its send time, so that a packet replayed later is dropped.
//!
//! Datagram: `MAGIC (4) | nonce (24) | AEAD(plain) (len + 16)`, the magic
//! as associated data; `plain = sent_at_ms (u64 BE) | message id (u32 BE)
//! | fragment index (u8) | fragment count (u8) | bytes`. The nonce is
//! random (192 bits: no coordination, no collision in practice). A chitchat
//! message fills up to 65,507 bytes, the largest UDP payload; sealed it is
//! 58 bytes longer, so one that no longer fits goes as two fragments
//! (each sealed on its own) and is put together again on arrival.
//!
//! Replay protection: a packet is accepted only within
//! [`REPLAY_WINDOW_MS`] of its send time (either way: clocks differ), and
//! only once: its nonce is remembered for twice that window, past which
//! its time is out of the window anyway.
//!
//! [`Opener`] is the pure part (no I/O, time passed in): the `gossip` fuzz
//! target and the unit tests drive it directly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use rand::TryRngCore;

use crate::secret::{Channel, Keys, Refused, Rejections, ReplayCache, Secrets, now_ms};

/// First bytes of a sealed gossip packet (version 1).
pub const MAGIC: &[u8; 4] = b"RKG1";
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
const NONCE: usize = 24;
const TAG: usize = 16;
/// `sent_at_ms`, message id, fragment index and count.
const HEADER: usize = 8 + 4 + 1 + 1;
/// Bytes a sealed packet adds to what it carries.
pub const OVERHEAD: usize = MAGIC.len() + NONCE + TAG + HEADER;
/// Most bytes of a message one packet carries.
pub const MAX_FRAGMENT: usize = MAX_DATAGRAM - OVERHEAD;
/// Most fragments of one message (a chitchat message needs at most two).
const MAX_FRAGMENTS: u8 = 4;
/// How far a packet's send time may lie from the receiver's clock, either
/// way: gossip takes milliseconds, clocks of a cluster's machines (NTP)
/// differ by far less; a replay after this is refused as stale.
pub const REPLAY_WINDOW_MS: u64 = 30_000;
/// Nonces remembered at most: ~60 s of a busy node's packets (a node
/// gets tens per second); past that the oldest go first.
const MAX_REMEMBERED: usize = 200_000;
/// How long half a message waits for its other fragment.
const FRAGMENT_WAIT_MS: u64 = 5_000;
/// Messages waiting for fragments at most.
const MAX_PARTIAL: usize = 256;

/// Seals `message` (a serialized chitchat message) as one packet, or
/// several when it does not fit in one, under `keys`.
pub fn seal(keys: &Keys, message: &[u8], sent_at_ms: u64, id: u32) -> Vec<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new((&keys.gossip).into());
    let pieces: Vec<&[u8]> = if message.is_empty() {
        vec![message]
    } else {
        message.chunks(MAX_FRAGMENT).collect()
    };
    let count = pieces.len() as u8;
    pieces
        .into_iter()
        .enumerate()
        .map(|(index, piece)| {
            let mut plain = Vec::with_capacity(HEADER + piece.len());
            plain.extend_from_slice(&sent_at_ms.to_be_bytes());
            plain.extend_from_slice(&id.to_be_bytes());
            plain.push(index as u8);
            plain.push(count);
            plain.extend_from_slice(piece);
            let mut nonce = [0u8; NONCE];
            // The OS generator; were it to fail, a counter-free random
            // nonce from the thread generator (also a CSPRNG) stands in.
            if rand::rngs::OsRng.try_fill_bytes(&mut nonce).is_err() {
                nonce = rand::random();
            }
            let sealed = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &plain,
                        aad: MAGIC,
                    },
                )
                .unwrap_or_default();
            let mut packet = Vec::with_capacity(MAGIC.len() + NONCE + sealed.len());
            packet.extend_from_slice(MAGIC);
            packet.extend_from_slice(&nonce);
            packet.extend_from_slice(&sealed);
            packet
        })
        .collect()
}

/// A message waiting for its other fragments.
struct Partial {
    /// When its first fragment came.
    since_ms: u64,
    /// Its fragments by index.
    parts: Vec<Option<Vec<u8>>>,
}

/// Opens sealed packets: checks them, drops replays, joins fragments.
pub struct Opener {
    /// Nonces of packets accepted.
    seen: ReplayCache<NONCE>,
    /// Messages waiting for fragments, by sender and message id.
    partial: HashMap<(SocketAddr, u32), Partial>,
}

impl Default for Opener {
    fn default() -> Self {
        Opener {
            seen: ReplayCache::new(REPLAY_WINDOW_MS, MAX_REMEMBERED),
            partial: HashMap::new(),
        }
    }
}

impl Opener {
    /// Opens `packet` from `from` at `now_ms` (ms since the Unix epoch):
    /// the whole message once it has every fragment, `None` while it
    /// waits for more, or why the packet is refused.
    pub fn open(
        &mut self,
        secrets: &Secrets,
        packet: &[u8],
        from: SocketAddr,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, Refused> {
        let Some(rest) = packet.strip_prefix(MAGIC) else {
            return Err(Refused::Unsealed);
        };
        if rest.len() < NONCE + TAG + HEADER {
            return Err(Refused::Malformed);
        }
        let (nonce, sealed) = rest.split_at(NONCE);
        let plain = secrets
            .accepted()
            .find_map(|keys| {
                XChaCha20Poly1305::new((&keys.gossip).into())
                    .decrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: MAGIC,
                        },
                    )
                    .ok()
            })
            .ok_or(Refused::BadKey)?;
        let (header, body) = plain.split_at(HEADER);
        let sent_at_ms =
            u64::from_be_bytes(header[..8].try_into().map_err(|_| Refused::Malformed)?);
        let id = u32::from_be_bytes(header[8..12].try_into().map_err(|_| Refused::Malformed)?);
        let (index, count) = (header[12], header[13]);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| Refused::Malformed)?;
        self.seen.accept(nonce, sent_at_ms, now_ms)?;
        if count == 0 || count > MAX_FRAGMENTS || index >= count {
            return Err(Refused::Malformed);
        }
        if count == 1 {
            return Ok(Some(body.to_vec()));
        }
        self.partial
            .retain(|_, p| now_ms.saturating_sub(p.since_ms) < FRAGMENT_WAIT_MS);
        if self.partial.len() >= MAX_PARTIAL {
            self.partial.clear();
        }
        let waiting = self.partial.entry((from, id)).or_insert_with(|| Partial {
            since_ms: now_ms,
            parts: vec![None; count as usize],
        });
        if waiting.parts.len() != count as usize {
            self.partial.remove(&(from, id));
            return Err(Refused::Malformed);
        }
        waiting.parts[index as usize] = Some(body.to_vec());
        if waiting.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let done = self.partial.remove(&(from, id)).map(|p| p.parts);
        Ok(done.map(|parts| parts.into_iter().flatten().flatten().collect()))
    }
}

/// The chitchat transport of a node with a cluster secret.
#[derive(Clone)]
pub struct SealedTransport {
    /// The keys sent with and accepted.
    pub secrets: Arc<Secrets>,
    /// Where refused packets are counted and logged.
    pub rejections: Rejections,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("failed to bind to {listen_addr}/UDP for gossip: {e}"))?;
        Ok(Box::new(SealedSocket {
            socket,
            secrets: self.secrets.clone(),
            rejections: self.rejections.clone(),
            opener: Opener::default(),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            next_id: rand::random(),
        }))
    }
}

/// One node's sealed gossip socket.
struct SealedSocket {
    /// The UDP socket.
    socket: tokio::net::UdpSocket,
    /// The keys.
    secrets: Arc<Secrets>,
    /// Refusals.
    rejections: Rejections,
    /// Replay cache and fragments.
    opener: Opener,
    /// Receive buffer (one datagram).
    buf: Box<[u8]>,
    /// Id of the next message sent (fragments of one message share it).
    next_id: u32,
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut plain = Vec::with_capacity(message.serialized_len());
        message.serialize(&mut plain);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        for packet in seal(&self.secrets.current, &plain, now_ms(), id) {
            if let Err(err) = self.socket.send_to(&packet, to).await {
                // Like chitchat's own transport: a failed send is the
                // peer's problem (gone, unreachable), not the socket's.
                tracing::debug!(%to, %err, "gossip packet not sent");
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(pair) => pair,
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    continue;
                }
                Err(err) => return Err(anyhow::anyhow!("fatal UDP recv error: {err}")),
            };
            let opened = self
                .opener
                .open(&self.secrets, &self.buf[..len], from, now_ms());
            let bytes = match opened {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(reason) => {
                    self.rejections.refused(Channel::Gossip, reason, from);
                    continue;
                }
            };
            match ChitchatMessage::deserialize(&mut bytes.as_slice()) {
                Ok(message) => return Ok((from, message)),
                Err(_) => self
                    .rejections
                    .refused(Channel::Gossip, Refused::Malformed, from),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(seed: u8) -> Secrets {
        Secrets {
            current: Keys::derive(&[seed; 32]).unwrap(),
            next: None,
        }
    }

    fn from() -> SocketAddr {
        "127.0.0.1:7000".parse().unwrap()
    }

    #[test]
    fn sealed_packets_open_once_within_the_window() {
        let (keys, now) = (secrets(1), 1_800_000_000_000);
        let packets = seal(&keys.current, b"hello gossip", now, 7);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].len(), b"hello gossip".len() + OVERHEAD);
        assert!(!packets[0].windows(5).any(|w| w == b"hello"), "encrypted");
        let mut opener = Opener::default();
        assert_eq!(
            opener.open(&keys, &packets[0], from(), now + 5),
            Ok(Some(b"hello gossip".to_vec()))
        );
        assert_eq!(
            opener.open(&keys, &packets[0], from(), now + 10),
            Err(Refused::Replay)
        );
        // Later than the window: stale, even to an opener that forgot it.
        let late = now + REPLAY_WINDOW_MS + 1;
        assert_eq!(
            Opener::default().open(&keys, &packets[0], from(), late),
            Err(Refused::Stale)
        );
        assert_eq!(
            opener.open(&keys, &packets[0], from(), late + 3 * REPLAY_WINDOW_MS),
            Err(Refused::Stale)
        );
        // A packet of that time: the old nonce is forgotten meanwhile.
        let later = late + 3 * REPLAY_WINDOW_MS;
        let fresh = seal(&keys.current, b"later", later, 8).remove(0);
        assert!(opener.open(&keys, &fresh, from(), later).is_ok());
        assert_eq!(opener.seen.len(), 1, "only the fresh nonce is held");
    }

    #[test]
    fn other_secrets_tampering_and_junk_are_refused() {
        let now = 1_800_000_000_000;
        let packet = seal(&secrets(1).current, b"x", now, 1).remove(0);
        let mut opener = Opener::default();
        assert_eq!(
            opener.open(&secrets(2), &packet, from(), now),
            Err(Refused::BadKey)
        );
        let mut flipped = packet.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            opener.open(&secrets(1), &flipped, from(), now),
            Err(Refused::BadKey)
        );
        assert_eq!(
            opener.open(&secrets(1), b"\x00\x01chitchat", from(), now),
            Err(Refused::Unsealed)
        );
        assert_eq!(
            opener.open(&secrets(1), b"RKG1short", from(), now),
            Err(Refused::Malformed)
        );
        // A node rotating holds both: it takes either.
        let rotating = Secrets {
            current: secrets(2).current,
            next: Some(secrets(1).current),
        };
        assert_eq!(
            opener.open(&rotating, &packet, from(), now),
            Ok(Some(b"x".to_vec()))
        );
    }

    #[test]
    fn a_message_too_large_for_one_packet_goes_in_two() {
        let (keys, now) = (secrets(3), 1_800_000_000_000);
        let message: Vec<u8> = (0..MAX_DATAGRAM).map(|i| (i % 251) as u8).collect();
        let packets = seal(&keys.current, &message, now, 9);
        assert_eq!(packets.len(), 2);
        assert!(packets.iter().all(|p| p.len() <= MAX_DATAGRAM));
        let mut opener = Opener::default();
        assert_eq!(opener.open(&keys, &packets[1], from(), now), Ok(None));
        assert_eq!(
            opener.open(&keys, &packets[0], from(), now),
            Ok(Some(message))
        );
        assert!(opener.partial.is_empty());
    }
}
