//! Node-to-node connections authenticated and encrypted with the cluster
//! secret (F27): the Noise protocol, pattern `NNpsk0` (both sides
//! ephemeral X25519 keys, the secret's RPC key mixed in first, then
//! ChaCha20-Poly1305 and BLAKE2s; the `snow` crate), under the gRPC
//! HTTP/2 connection a peer would otherwise open in clear.
//!
//! On the wire, on the node's one TCP port:
//!
//! - initiator: `PREAMBLE (4) | version (1) | len (u16 BE) | handshake 1`,
//!   whose encrypted payload is `sent_at_ms (u64 BE) | nonce (16)`;
//! - responder: `len (u16 BE) | handshake 2`, or it closes the connection
//!   (no answer tells a prober anything);
//! - then both ways: `len (u16 BE) | Noise transport message` (at most
//!   65,535 bytes, 16 of them the tag), each carrying HTTP/2 bytes.
//!
//! Only a holder of the secret can write a first message the responder
//! opens, or read its answer; both sides' keys are fresh per connection,
//! so recorded traffic replayed on a new connection does not decrypt
//! (its handshake is refused first: the first message's send time must lie
//! within [`REPLAY_WINDOW_MS`] and its nonce be new), and a transport
//! message changed, dropped or replayed within a connection fails its tag
//! (Noise counts nonces), which ends the connection.
//!
//! The responder tries each accepted secret (the current one, and during a
//! rotation the next): the first whose key opens the first message wins.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rand::TryRngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::secret::{Channel, Keys, Refused, Rejections, ReplayCache, Secrets, now_ms};

/// First bytes a peer sends on an RPC connection with a secret.
pub const PREAMBLE: &[u8; 4] = b"RKVN";
/// Version of this framing.
const VERSION: u8 = 1;
/// The Noise protocol.
const PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a handshake of another protocol or
/// version cannot be passed off as ours.
const PROLOGUE: &[u8] = b"ringkv rpc 1";
/// A Noise message's largest size.
const MAX_MESSAGE: usize = 65_535;
/// The tag of each Noise transport message.
const TAG: usize = 16;
/// Most plaintext bytes of one transport message.
const MAX_PLAIN: usize = MAX_MESSAGE - TAG;
/// Bytes of the first message's payload: send time and nonce.
const HELLO: usize = 8 + 16;
/// How far the first message's send time may lie from the responder's
/// clock (either way); outside, it is refused as stale.
pub const REPLAY_WINDOW_MS: u64 = 30_000;
/// Handshake nonces remembered at most (a node opens a handful of
/// connections per peer and restart).
const MAX_REMEMBERED: usize = 100_000;
/// How long a handshake may take, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn params() -> snow::params::NoiseParams {
    // A constant string of a supported protocol: parsing cannot fail.
    PARAMS
        .parse()
        .unwrap_or_else(|_| unreachable!("{PARAMS} parses"))
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Opens the Noise session of an outgoing connection on `stream`, as the
/// initiator, with `keys`.
pub async fn connect<S>(mut stream: S, keys: &Keys) -> io::Result<NoiseStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut handshake = snow::Builder::new(params())
        .psk(0, &keys.rpc)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(|b| b.build_initiator())
        .map_err(|e| invalid(format!("noise: {e}")))?;
    let mut hello = [0u8; HELLO];
    hello[..8].copy_from_slice(&now_ms().to_be_bytes());
    rand::rngs::OsRng
        .try_fill_bytes(&mut hello[8..])
        .map_err(|e| io::Error::other(format!("no random bytes: {e}")))?;
    let mut message = vec![0u8; MAX_MESSAGE];
    let len = handshake
        .write_message(&hello, &mut message)
        .map_err(|e| invalid(format!("noise: {e}")))?;
    let mut first = Vec::with_capacity(PREAMBLE.len() + 3 + len);
    first.extend_from_slice(PREAMBLE);
    first.push(VERSION);
    first.extend_from_slice(&(len as u16).to_be_bytes());
    first.extend_from_slice(&message[..len]);
    let answer = async {
        stream.write_all(&first).await?;
        stream.flush().await?;
        read_frame(&mut stream).await
    };
    let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, answer)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "noise handshake timed out"))?
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the peer refused the handshake (another cluster secret?): {e}"),
            )
        })?;
    handshake.read_message(&answer, &mut message).map_err(|_| {
        invalid("the peer's handshake answer does not open: another cluster secret")
    })?;
    let transport = handshake
        .into_transport_mode()
        .map_err(|e| invalid(format!("noise: {e}")))?;
    Ok(NoiseStream::new(stream, transport, None))
}

/// One length-prefixed frame (a handshake message).
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    let mut frame = vec![0u8; len];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

/// The responder's side: the secrets it takes and the handshakes it saw.
#[derive(Clone)]
pub struct Acceptor {
    /// The keys accepted.
    secrets: Arc<Secrets>,
    /// Nonces of recent first messages; a std mutex held only to check one.
    seen: Arc<Mutex<ReplayCache<16>>>,
    /// Where refusals are counted and logged.
    rejections: Rejections,
}

impl Acceptor {
    /// An acceptor of connections made with any of `secrets`.
    pub fn new(secrets: Arc<Secrets>, rejections: Rejections) -> Acceptor {
        Acceptor {
            secrets,
            seen: Arc::new(Mutex::new(ReplayCache::new(
                REPLAY_WINDOW_MS,
                MAX_REMEMBERED,
            ))),
            rejections,
        }
    }

    /// Counts (and maybe logs) a refusal from `peer`.
    pub fn refused(&self, reason: Refused, peer: SocketAddr) {
        self.rejections.refused(Channel::Rpc, reason, peer);
    }

    /// Answers the handshake of a connection from `peer` whose
    /// [`PREAMBLE`] was read already; a refusal is counted and logged.
    pub async fn accept<S>(&self, mut stream: S, peer: SocketAddr) -> Option<NoiseStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let version = stream.read_u8().await.map_err(|_| Refused::Malformed)?;
            if version != VERSION {
                return Err(Refused::Malformed);
            }
            let first = read_frame(&mut stream)
                .await
                .map_err(|_| Refused::Malformed)?;
            let (mut handshake, hello) = self.open_first(&first)?;
            let sent_at =
                u64::from_be_bytes(hello[..8].try_into().map_err(|_| Refused::Malformed)?);
            let nonce: [u8; 16] = hello[8..].try_into().map_err(|_| Refused::Malformed)?;
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .accept(nonce, sent_at, now_ms())?;
            let mut message = vec![0u8; MAX_MESSAGE];
            let len = handshake
                .write_message(&[], &mut message)
                .map_err(|_| Refused::Malformed)?;
            let transport = handshake
                .into_transport_mode()
                .map_err(|_| Refused::Malformed)?;
            let mut answer = Vec::with_capacity(2 + len);
            answer.extend_from_slice(&(len as u16).to_be_bytes());
            answer.extend_from_slice(&message[..len]);
            stream
                .write_all(&answer)
                .await
                .map_err(|_| Refused::Malformed)?;
            stream.flush().await.map_err(|_| Refused::Malformed)?;
            Ok(transport)
        })
        .await
        .unwrap_or(Err(Refused::Malformed));
        match result {
            Ok(transport) => Some(NoiseStream::new(
                stream,
                transport,
                Some((self.rejections.clone(), peer)),
            )),
            Err(reason) => {
                self.refused(reason, peer);
                None
            }
        }
    }

    /// The handshake state and payload of a first message, trying each
    /// accepted secret.
    fn open_first(&self, first: &[u8]) -> Result<(snow::HandshakeState, Vec<u8>), Refused> {
        for keys in self.secrets.accepted() {
            let mut handshake = snow::Builder::new(params())
                .psk(0, &keys.rpc)
                .and_then(|b| b.prologue(PROLOGUE))
                .and_then(|b| b.build_responder())
                .map_err(|_| Refused::Malformed)?;
            let mut payload = vec![0u8; MAX_MESSAGE];
            if let Ok(len) = handshake.read_message(first, &mut payload) {
                if len != HELLO {
                    return Err(Refused::Malformed);
                }
                payload.truncate(len);
                return Ok((handshake, payload));
            }
        }
        Err(Refused::BadKey)
    }
}

/// A byte stream inside a Noise session: what is written goes out
/// encrypted in frames, what is read was decrypted and checked.
pub struct NoiseStream<S> {
    /// The connection underneath.
    inner: S,
    /// Noise keys and nonces of both directions.
    transport: snow::TransportState,
    /// Frames read but not complete yet (ciphertext).
    rbuf: Vec<u8>,
    /// Decrypted bytes not handed out yet, from `rpos`.
    plain: Vec<u8>,
    /// How much of `plain` was handed out.
    rpos: usize,
    /// Encrypted frames not written yet, from `wpos`.
    wbuf: Vec<u8>,
    /// How much of `wbuf` was written.
    wpos: usize,
    /// Scratch space for one message.
    scratch: Vec<u8>,
    /// Where a message failing its tag is counted (responder side).
    rejections: Option<(Rejections, SocketAddr)>,
}

impl<S> NoiseStream<S> {
    fn new(
        inner: S,
        transport: snow::TransportState,
        rejections: Option<(Rejections, SocketAddr)>,
    ) -> Self {
        NoiseStream {
            inner,
            transport,
            rbuf: Vec::with_capacity(2 + MAX_MESSAGE),
            plain: Vec::with_capacity(MAX_MESSAGE),
            rpos: 0,
            wbuf: Vec::with_capacity(2 + MAX_MESSAGE),
            wpos: 0,
            scratch: vec![0u8; MAX_MESSAGE],
            rejections,
        }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The connection underneath, the session dropped (tests and fuzzing
    /// write raw bytes into an established session with it).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The length of the first complete frame in `buf`, if there is one.
pub fn complete_frame(buf: &[u8]) -> Option<usize> {
    let len = u16::from_be_bytes(buf.get(..2)?.try_into().ok()?) as usize;
    (buf.len() >= 2 + len).then_some(len)
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rpos < this.plain.len() {
                let n = out.remaining().min(this.plain.len() - this.rpos);
                out.put_slice(&this.plain[this.rpos..this.rpos + n]);
                this.rpos += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(len) = complete_frame(&this.rbuf) {
                if len < TAG {
                    return Poll::Ready(Err(invalid("a noise frame shorter than its tag")));
                }
                match this
                    .transport
                    .read_message(&this.rbuf[2..2 + len], &mut this.scratch)
                {
                    Ok(n) => {
                        this.plain.clear();
                        this.plain.extend_from_slice(&this.scratch[..n]);
                        this.rpos = 0;
                        this.rbuf.drain(..2 + len);
                        continue;
                    }
                    Err(_) => {
                        if let Some((rejections, peer)) = &this.rejections {
                            rejections.refused(Channel::Rpc, Refused::BadKey, *peer);
                        }
                        return Poll::Ready(Err(invalid(
                            "a noise message failed its check (changed, replayed or out of order)",
                        )));
                    }
                }
            }
            // Read more ciphertext, at most the rest of one frame's worth.
            // No complete frame: fewer bytes than one frame's largest.
            let start = this.rbuf.len();
            this.rbuf.resize(2 + MAX_MESSAGE, 0);
            let mut read = ReadBuf::new(&mut this.rbuf[start..]);
            let result = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let filled = read.filled().len();
            this.rbuf.truncate(start + filled);
            ready!(result)?;
            if filled == 0 {
                return if this.rbuf.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a noise frame",
                    )))
                };
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes out the frames waiting in `wbuf`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(MAX_PLAIN);
        let len = this
            .transport
            .write_message(&buf[..n], &mut this.scratch)
            .map_err(|e| invalid(format!("noise: {e}")))?;
        this.wbuf.extend_from_slice(&(len as u16).to_be_bytes());
        this.wbuf.extend_from_slice(&this.scratch[..len]);
        // Start sending at once; what does not go now goes on the next
        // write or flush.
        if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The connector of tonic channels to peers: TCP, then the Noise handshake
/// with this node's current secret.
#[derive(Clone)]
pub struct Connector {
    /// The keys sent with.
    pub secrets: Arc<Secrets>,
}

impl tower::Service<axum::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<NoiseStream<tokio::net::TcpStream>>;
    type Error = io::Error;
    type Future = futures::future::BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: axum::http::Uri) -> Self::Future {
        let secrets = self.secrets.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid(format!("no port in {uri}")))?;
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = stream.set_nodelay(true);
            let noise = connect(stream, &secrets.current).await?;
            Ok(hyper_util::rt::TokioIo::new(noise))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(seed: u8, next: Option<u8>) -> Arc<Secrets> {
        Arc::new(Secrets {
            current: Keys::derive(&[seed; 32]).unwrap(),
            next: next.map(|n| Keys::derive(&[n; 32]).unwrap()),
        })
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    /// Runs a handshake over an in-memory pipe; the acceptor reads the
    /// preamble first, as the accept loop does.
    async fn pair(
        client: Arc<Secrets>,
        acceptor: &Acceptor,
    ) -> (
        io::Result<NoiseStream<tokio::io::DuplexStream>>,
        Option<NoiseStream<tokio::io::DuplexStream>>,
    ) {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let server = async {
            let mut preamble = [0u8; 4];
            b.read_exact(&mut preamble).await.unwrap();
            assert_eq!(&preamble, PREAMBLE);
            acceptor.accept(b, peer()).await
        };
        tokio::join!(connect(a, &client.current), server)
    }

    #[tokio::test]
    async fn a_session_carries_bytes_both_ways_in_frames() {
        let acceptor = Acceptor::new(secrets(1, None), Rejections::new(Default::default()));
        let (client, server) = pair(secrets(1, None), &acceptor).await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let writer = async {
            client.write_all(&big).await.unwrap();
            client.flush().await.unwrap();
            client.shutdown().await.unwrap();
            client
        };
        let reader = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        };
        let (mut client, got) = tokio::join!(writer, reader);
        assert_eq!(got, big);
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");
    }

    #[tokio::test]
    async fn another_secret_is_refused_and_a_rotating_node_takes_both() {
        let metrics = crate::metrics::Metrics::new();
        let acceptor = Acceptor::new(secrets(1, Some(2)), Rejections::new(metrics.clone()));
        let (client, server) = pair(secrets(3, None), &acceptor).await;
        assert!(client.is_err() && server.is_none());
        let (client, server) = pair(secrets(2, None), &acceptor).await;
        assert!(client.is_ok() && server.is_some());
        let text = metrics.encode(&Default::default()).unwrap();
        assert!(
            text.contains(r#"ringkv_cluster_rejections_total{channel="rpc",reason="bad_key"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_replayed_first_message_is_refused() {
        let acceptor = Acceptor::new(secrets(1, None), Rejections::new(Default::default()));
        // Record what a client sends on a connection.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let recorder = tokio::spawn(async move {
            let mut sent = vec![0u8; 4 + 1 + 2 + 72];
            b.read_exact(&mut sent).await.unwrap();
            sent
        });
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            connect(a, &secrets(1, None).current),
        )
        .await;
        let recorded = recorder.await.unwrap();
        // Played to the node once: accepted (it is a genuine first message).
        for expected in [true, false] {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            a.write_all(&recorded).await.unwrap();
            let mut preamble = [0u8; 4];
            b.read_exact(&mut preamble).await.unwrap();
            assert_eq!(acceptor.accept(b, peer()).await.is_some(), expected);
        }
    }

    #[test]
    fn frames_are_found_by_their_length() {
        assert_eq!(complete_frame(&[]), None);
        assert_eq!(complete_frame(&[0]), None);
        assert_eq!(complete_frame(&[0, 3, 1, 2]), None);
        assert_eq!(complete_frame(&[0, 3, 1, 2, 3]), Some(3));
        assert_eq!(complete_frame(&[0, 0]), Some(0));
    }
}
