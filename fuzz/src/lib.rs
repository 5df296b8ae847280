//! The fuzz harnesses of ringkv's parsers of untrusted input (F26, §7).
//!
//! Each harness takes the fuzzer's bytes, drives the real parser behind one
//! of ringkv's edges with them, and panics when an invariant breaks:
//!
//! - [`http_api`]: a request (method, path and query, headers, body) through
//!   a node's whole public router, in-process.
//! - [`headers`]: the header and path parsers one by one (Range,
//!   If-None-Match, If-Modified-Since, keys in paths, quorum parameters),
//!   with their round trips.
//! - [`rpc`]: gRPC messages through a node's replica service, in-process.
//! - [`gossip`]: what peers publish in gossip, turned into a ring.
//! - [`record`]: arbitrary bytes in every space of a store, read back.
//! - [`secure`]: the parsers of F27: the `Authorization` header, sealed
//!   gossip packets, the Noise handshake and the session's frames.
//! - [`resp`]: bytes on the Redis protocol port through the frame decoder
//!   (whole and split), the command table and the pure parsers behind
//!   commands, with the encoder's round trip.
//!
//! The same functions serve the cargo-fuzz targets (`fuzz_targets/`) and
//! `tests/fuzz_corpus.rs`, which replays every corpus and regression file in
//! the README's test command. Inputs are text-like on purpose, so that a
//! corpus file can be read and written by hand (see `fuzz/README.md`).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http;
use bytes::Bytes;
use http_body_util::BodyExt;
use ringkv::membership::{PeerState, ReplicaSetting, cluster_replicas, merge, ring_from_peers};
use ringkv::proto::{RecordMeta, StoredRecord};
use ringkv::ring::{NodeId, Token, TokenRange, decode_tokens, encode_tokens};
use ringkv::server::RunningNode;
use ringkv::storage::{Engine, MemoryEngine, Op, Space, StorageOptions, Store};
use ringkv::version::Version;

/// Longest one request may take in-process before it counts as a hang.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// Inputs served by one node before it is replaced by a fresh one, so that
/// what the fuzzer stored does not grow without bound.
const INPUTS_PER_NODE: u64 = 20_000;

/// One in-process node (in memory, one replica) and the runtime it runs on.
struct Harness {
    runtime: tokio::runtime::Runtime,
    node: Option<RunningNode>,
    served: u64,
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

/// Runs `f` with a node, starting one on first use and replacing it every
/// [`INPUTS_PER_NODE`] inputs.
fn with_node<T>(f: impl AsyncFnOnce(&RunningNode) -> T) -> T {
    let mut slot = HARNESS.lock().unwrap_or_else(|p| p.into_inner());
    let harness = slot.get_or_insert_with(|| Harness {
        runtime: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime"),
        node: None,
        served: 0,
    });
    let Harness {
        runtime,
        node,
        served,
    } = harness;
    *served += 1;
    if *served % INPUTS_PER_NODE == 0
        && let Some(old) = node.take()
    {
        runtime
            .block_on(old.stop())
            .expect("an in-memory node stops");
    }
    let node = node.get_or_insert_with(|| runtime.block_on(start_node()));
    runtime.block_on(f(node))
}

async fn start_node() -> RunningNode {
    use clap::Parser;
    let args = ringkv::config::ServeArgs::try_parse_from([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--in-memory",
        "--replicas",
        "1",
        "--tokens",
        "8",
        "--no-hints",
    ])
    .expect("harness flags parse");
    let node = ringkv::server::start(args.config())
        .await
        .expect("an in-memory node starts");
    // Inputs meet a node that serves, not one still publishing its tokens.
    node.wait_ready(REQUEST_DEADLINE)
        .await
        .expect("the harness node gets ready");
    node
}

/// Sends one request to the node and reads the whole answer.
async fn exchange(
    node: &RunningNode,
    request: http::Request<Body>,
) -> (
    http::StatusCode,
    http::HeaderMap,
    Bytes,
    Option<http::HeaderMap>,
) {
    let what = format!("{} {}", request.method(), request.uri());
    let answer = async {
        let response = node.call(request).await;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await;
        (parts, collected)
    };
    let (parts, collected) = tokio::time::timeout(REQUEST_DEADLINE, answer)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {REQUEST_DEADLINE:?}"));
    match collected {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (parts.status, parts.headers, collected.to_bytes(), trailers)
        }
        // A body that fails midway (a value read from a broken replica) is
        // an answer the client sees as a cut connection: allowed.
        Err(_) => (parts.status, parts.headers, Bytes::new(), None),
    }
}

/// Splits `data` at the first `\n\n` into a head of lines and a body.
fn head_and_body(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &data[data.len()..]),
    };
    (head.split(|b| *b == b'\n').collect(), body)
}

/// A request to the public API, written like HTTP/1 without the version:
///
/// ```text
/// PUT /keys/a%20b?w=1
/// Content-Type: text/plain
///
/// body bytes
/// ```
///
/// Every error answer must be JSON with an `error` field (F20), and no input
/// may make the node fail with 500: a bad request is the client's error,
/// said as such. A value written and acknowledged reads back the same.
pub fn http_api(data: &[u8]) {
    let (lines, body) = head_and_body(data);
    let Some((first, header_lines)) = lines.split_first() else {
        return;
    };
    let mut words = first.splitn(2, |b| *b == b' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    // What hyper would refuse before ringkv sees it.
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    if uri.scheme().is_some() || uri.path_and_query().is_none() {
        return;
    }
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(uri.clone());
    for line in header_lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        // The accept loop routes these to the replica service: the `rpc`
        // harness covers it.
        if name == http::header::CONTENT_TYPE && value.as_bytes().starts_with(b"application/grpc") {
            return;
        }
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(Body::from(body.to_vec())) else {
        return;
    };
    let path = uri.path().to_string();
    let is_write = method == http::Method::PUT && path.starts_with("/keys/");
    with_node(async |node| {
        let (status, headers, answer, _) = exchange(node, request).await;
        assert_ne!(
            status,
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {uri} failed inside the node: {}",
            String::from_utf8_lossy(&answer)
        );
        let is_page = path == "/" || path.starts_with("/?");
        let has_body = method != http::Method::HEAD;
        if (status.is_client_error() || status.is_server_error()) && !is_page && has_body {
            let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_else(|_| {
                panic!(
                    "{method} {uri} answered {status} without JSON: {:?} ({headers:?})",
                    String::from_utf8_lossy(&answer)
                )
            });
            assert!(
                json.get("error").is_some_and(|e| e.is_string()),
                "{method} {uri} answered {status} without an error message: {json}"
            );
        }
        if is_write && status.is_success() {
            // Read back what was acknowledged, then drop it so the store
            // stays small.
            let get = http::Request::get(uri.path())
                .body(Body::empty())
                .expect("a GET of a path that was just accepted");
            let (read, _, value, _) = exchange(node, get).await;
            assert_eq!(read, http::StatusCode::OK, "GET after {method} {uri}");
            assert_eq!(
                &value[..],
                body,
                "{uri} read back differs from what was written"
            );
            let delete = http::Request::delete(uri.path())
                .body(Body::empty())
                .expect("a DELETE of a path that was just accepted");
            let (deleted, _, _, _) = exchange(node, delete).await;
            assert!(
                deleted.is_success(),
                "DELETE after {method} {uri}: {deleted}"
            );
        }
    });
}

/// The header and path parsers the API uses, one by one. The input is
/// split at newlines: a value size, then strings given to each parser.
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let size: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(1000);
    for line in lines {
        use ringkv::http::range::{RangeRequest, none_match, not_modified_since, parse_range};
        match parse_range(Some(line), size) {
            RangeRequest::Partial { start, end } => {
                assert!(
                    start <= end && end < size,
                    "Range {line:?} on {size} bytes gave {start}..={end}"
                );
            }
            RangeRequest::Whole | RangeRequest::Unsatisfiable => {}
        }
        let _ = none_match(line, "\"0123abcd\"");
        let _ = not_modified_since(line, 1_700_000_000);
        if let Ok(key) = ringkv::key::from_url_path(line) {
            let again = ringkv::key::from_url_path(&ringkv::key::to_url_path(&key));
            assert_eq!(again.ok().as_deref(), Some(key.as_str()), "key {line:?}");
        }
        if let Ok(quorum) = line.parse::<ringkv::coordinator::Quorum>() {
            for n in 1..=5 {
                if let Ok(count) = quorum.count(n) {
                    assert!(
                        (1..=n).contains(&count),
                        "quorum {line:?} of {n} is {count}"
                    );
                }
            }
        }
    }
}

/// The replica service's methods, in the order the first input byte picks.
const RPC_METHODS: [&str; 9] = [
    "Write",
    "WriteStream",
    "Read",
    "ReadStream",
    "Scan",
    "Sync",
    "Tree",
    "Balance",
    "Ping",
];

/// One gRPC call to the replica service. The first byte picks the method;
/// the rest is a run of messages, each a big-endian `u16` length and that
/// many bytes (the last takes what is left), framed as gRPC frames. No
/// input may panic or hang the node, and a malformed message fails with a
/// status, never `UNKNOWN`.
pub fn rpc(data: &[u8]) {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let method = RPC_METHODS[usize::from(pick) % RPC_METHODS.len()];
    let mut framed = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = match rest {
            [a, b, tail @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), tail),
            _ => (rest.len(), &rest[rest.len()..]),
        };
        let len = len.min(tail.len());
        framed.push(0u8);
        framed.extend_from_slice(&(len as u32).to_be_bytes());
        framed.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    let request = http::Request::post(format!("/ringkv.v1.Replica/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "500m")
        .body(Body::from(framed))
        .expect("a well-formed gRPC request");
    with_node(async |node| {
        let (status, headers, _, trailers) = exchange(node, request).await;
        assert_eq!(status, http::StatusCode::OK, "{method}: HTTP {status}");
        let code = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_string();
        assert_ne!(
            code, "2",
            "{method} failed with UNKNOWN: {headers:?} {trailers:?}"
        );
    });
}

/// What peers publish in gossip, as lines: `@host:port generation live
/// [version]` starts a peer (live is `1`), `key=value` adds one of its
/// keys. The ring built from it must place every key on distinct members,
/// at most N of them, and every published value must parse or be ignored.
/// The view as sent to another node over RPC (ring-version fencing) comes
/// back the same, and merging it (with itself, or its two halves in either
/// order) builds the same ring.
pub fn gossip(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut peers: Vec<PeerState> = Vec::new();
    for line in text.split('\n') {
        if let Some(rest) = line.strip_prefix('@') {
            let mut words = rest.split(' ');
            peers.push(PeerState {
                node: words.next().unwrap_or_default().to_string(),
                generation: words.next().and_then(|g| g.parse().ok()).unwrap_or(0),
                live: words.next() == Some("1"),
                version: words.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                keys: HashMap::new(),
            });
        } else if let (Some(peer), Some((key, value))) = (peers.last_mut(), line.split_once('=')) {
            peer.keys.insert(key.to_string(), value.to_string());
        }
    }
    for peer in &peers {
        for (key, value) in &peer.keys {
            match key.as_str() {
                "tokens" => {
                    if let Ok(tokens) = decode_tokens(value) {
                        assert_eq!(decode_tokens(&encode_tokens(&tokens)).ok(), Some(tokens));
                    }
                }
                "replicas" => {
                    if let Some(setting) = ReplicaSetting::parse(value) {
                        assert_eq!(ReplicaSetting::parse(&setting.encode()), Some(setting));
                    }
                }
                "stats" => {
                    let _ = serde_json::from_str::<ringkv::lifecycle::NodeStats>(value);
                }
                _ => {}
            }
        }
    }
    let ring = ring_from_peers(&peers, 3);
    let setting = cluster_replicas(&peers);
    let owners = ring.members().filter(|m| m.state.owns_ranges()).count();
    for probe in [
        &b""[..],
        b"a",
        b"photos/cat.jpg",
        &data[..data.len().min(16)],
    ] {
        let nodes = ring.nodes_of(probe);
        assert!(
            nodes.len() <= ring.replicas().max(1),
            "{nodes:?} for N={}",
            ring.replicas()
        );
        assert!(nodes.len() <= owners, "{nodes:?} from {owners} owners");
        let mut distinct = nodes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            nodes.len(),
            "a key placed twice on one node"
        );
        for node in &nodes {
            assert!(
                ring.member(node).is_some(),
                "{node} placed but not a member"
            );
        }
    }
    if let Some(setting) = setting {
        assert!(setting.n >= 1);
    }
    let _ = ring.movements();
    let _ = ring.load_shares();
    // Fencing: the placement view survives the wire, and merges obey the
    // laws that make views exchanged in any order converge.
    let view = merge::placement_only(&peers);
    let digest = |peers: &[PeerState]| ring_from_peers(peers, 3).digest();
    let sent = merge::from_wire(merge::to_wire(&view));
    if view.len() <= merge::MAX_VIEW_PEERS && view.iter().all(|p| p.keys.len() <= 256) {
        assert_eq!(digest(&sent), digest(&view));
    }
    let merged = merge::merge(&view, &view);
    assert_eq!(digest(&merge::merge(&merged, &merged)), digest(&merged));
    let (left, right) = view.split_at(view.len() / 2);
    assert_eq!(
        digest(&merge::merge(left, right)),
        digest(&merge::merge(right, left))
    );
    for key in [&b"a"[..], &data[..data.len().min(16)]] {
        let nodes = ring.nodes_of(key);
        assert_eq!(
            ringkv::ring::replica_set_hash(&nodes),
            ringkv::ring::replica_set_hash(&nodes.iter().rev().cloned().collect::<Vec<_>>())
        );
    }
    let me = NodeId::parse("127.0.0.1:7000").expect("a node id");
    let svg = ringkv::http::ring_svg(&ring, &me);
    assert!(
        !svg.contains("<script"),
        "markup from gossip reached the page"
    );
}

/// The on-disk format read back: the input is a run of entries, each a
/// space byte, a big-endian `u16` key length, the key, a `u16` value length
/// and the value. They are put into a memory engine as they are, then the
/// store is opened over it (which cleans half-written values and rebuilds
/// its hash-tree leaves) and everything it holds is read: no panic, and a
/// newer write over any key it lists reads back as written.
pub fn record(data: &[u8]) {
    const SPACES: [Space; 5] = [
        Space::Meta,
        Space::Chunks,
        Space::Pending,
        Space::Hints,
        Space::ByToken,
    ];
    let mut ops = Vec::new();
    let mut rest = data;
    while let [space, rest_after_space @ ..] = rest {
        let Some((key, tail)) = take_u16_prefixed(rest_after_space) else {
            break;
        };
        let (value, tail) = take_u16_prefixed(tail).unwrap_or((tail, &tail[tail.len()..]));
        ops.push(Op::Put(
            SPACES[usize::from(*space) % SPACES.len()],
            key.to_vec(),
            Bytes::copy_from_slice(value),
        ));
        rest = tail;
    }
    let engine = MemoryEngine::default();
    engine.apply(ops).expect("a memory engine takes any bytes");
    let options = StorageOptions {
        data_dir: None,
        fsync: false,
        disk_reserve: 0,
    };
    let Ok(store) = Store::open_engine(std::sync::Arc::new(engine), &options) else {
        return;
    };
    let whole = TokenRange {
        start: Token(0),
        end: Token(0),
    };
    let _ = store.keys_in_range(whole, None, 1000);
    let _ = store.leaf_hashes(whole);
    let _ = store.records_after(None, 1000);
    let _ = store.hints_after(Bound::Unbounded, 1000);
    let _ = store.key_count();
    let listed = store.list("", None, 1000).unwrap_or_default();
    for meta in &listed {
        let version = meta.version();
        if let Ok(Some(record)) = store.record(&meta.key) {
            let _ = store.inline_value(&record);
            for index in 0..record.chunk_count.min(4) {
                let _ = store.read_chunk(&meta.key, version, index);
            }
        }
        let _ = store.verify(&meta.key, version, |_| {});
    }
    if let Some(meta) = listed.first()
        && ringkv::key::validate(&meta.key).is_ok()
    {
        let value = Bytes::from_static(b"written over whatever was there");
        let newer = Version::new(meta.version().timestamp.saturating_add(1), 1);
        let fresh = RecordMeta {
            key: meta.key.clone(),
            version: Some(newer.into()),
            deleted: false,
            content_type: String::new(),
            size: value.len() as u64,
            checksum: Bytes::copy_from_slice(blake3::hash(&value).as_bytes()),
            expires_at: 0,
        };
        if newer > meta.version() && store.write_whole(fresh, value.clone()).is_ok() {
            let record: Option<StoredRecord> = store.record(&meta.key).ok().flatten();
            let record = record.expect("a record just written is there");
            assert_eq!(
                store.inline_value(&record).ok().flatten(),
                Some(value),
                "{:?} read back differs from what was written",
                meta.key
            );
        }
    }
}

/// A big-endian `u16` length, then that many bytes (or what is left).
fn take_u16_prefixed(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let [a, b, rest @ ..] = data else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
    Some(rest.split_at(len))
}

/// The runtime of the [`secure`] harness's in-memory sessions.
static SECURE_RUNTIME: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);

/// The parsers of F27, chosen by the first byte: `0` an `Authorization`
/// header value; `1` a gossip datagram (and the seal/open round trip of the
/// same bytes); `2` what a peer sends after the Noise preamble; `3` raw
/// frames into an established Noise session. Invariants: no panic, no
/// hang, nothing opened that was not sealed with the key, a round trip
/// gives back its bytes, a bearer token is a part of its header.
pub fn secure(data: &[u8]) {
    use ringkv::membership::sealed::{Opener, seal};
    use ringkv::rpc::noise;
    use ringkv::secret::{Keys, Rejections, Secrets};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = || Keys::derive(&[42u8; 32]).expect("keys");
    let secrets = || {
        std::sync::Arc::new(Secrets {
            current: keys(),
            next: Some(Keys::derive(&[43u8; 32]).expect("keys")),
        })
    };
    let now = 1_800_000_000_000u64;
    let from: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    match mode % 4 {
        0 => {
            if let Some(token) = ringkv::access::bearer_token(rest) {
                assert!(!token.is_empty() && token.len() < rest.len());
                let set = ringkv::access::TokenSet::parse("read fuzz-token-0123456789\n")
                    .expect("tokens");
                let verdict = set.check(Some(rest), ringkv::access::Scope::Read);
                let known = token == b"fuzz-token-0123456789";
                assert_eq!(verdict == ringkv::access::Verdict::Allowed, known);
            }
        }
        1 => {
            let secrets = secrets();
            let opened = Opener::default().open(&secrets, rest, from, now);
            if let Ok(Some(_)) = opened {
                panic!("opened a packet the fuzzer made without the key");
            }
            let mut opener = Opener::default();
            let mut whole = None;
            for packet in seal(&secrets.current, rest, now, 1) {
                assert!(packet.len() <= ringkv::membership::sealed::MAX_DATAGRAM);
                if let Some(message) = opener.open(&secrets, &packet, from, now).expect("opens") {
                    whole = Some(message);
                }
            }
            assert_eq!(whole.as_deref(), Some(rest), "round trip");
        }
        _ => {
            let mut slot = SECURE_RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
            let runtime = slot.get_or_insert_with(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
            });
            let acceptor = noise::Acceptor::new(secrets(), Rejections::new(Default::default()));
            let handshake = mode % 4 == 2;
            runtime.block_on(async {
                let work = async {
                    let (mut a, b) = tokio::io::duplex(1 << 20);
                    if handshake {
                        // The fuzzer's bytes as a first message: refused.
                        a.write_all(rest).await.expect("write");
                        drop(a);
                        assert!(acceptor.accept(b, from).await.is_none());
                        return;
                    }
                    let server = acceptor.accept(b, from);
                    let client = async {
                        // The acceptor reads after the preamble: skip it.
                        noise::connect(
                            PreambleSkipper {
                                inner: a,
                                skipped: 0,
                            },
                            &keys(),
                        )
                        .await
                    };
                    let (client, server) = tokio::join!(client, server);
                    let (Ok(client), Some(mut server)) = (client, server) else {
                        panic!("a genuine handshake failed");
                    };
                    let mut raw = client.into_inner().inner;
                    raw.write_all(rest).await.expect("write");
                    drop(raw);
                    let mut got = Vec::new();
                    // Whatever it read must have been sealed: random bytes
                    // never decrypt, so nothing or an error.
                    let result = server.read_to_end(&mut got).await;
                    assert!(got.is_empty(), "decrypted bytes the fuzzer made");
                    let _ = result;
                };
                tokio::time::timeout(Duration::from_secs(20), work)
                    .await
                    .expect("no hang");
            });
        }
    }
}

/// The client side of an in-memory Noise connection whose preamble the
/// accept loop would have read: its first 4 bytes are dropped on the way.
struct PreambleSkipper {
    inner: tokio::io::DuplexStream,
    skipped: usize,
}

impl tokio::io::AsyncRead for PreambleSkipper {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PreambleSkipper {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let skip = (4 - self.skipped).min(buf.len());
        if skip > 0 {
            self.skipped += skip;
            return std::task::Poll::Ready(Ok(skip));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
/// Whether a simple or error string inside `frame` holds CR or LF.
fn has_line_break(frame: &ringkv::resp::frame::Frame) -> bool {
    use ringkv::resp::frame::Frame;
    match frame {
        Frame::Simple(s) | Frame::Error(s) => s.contains(['\r', '\n']),
        Frame::Array(items) => items.iter().any(has_line_break),
        _ => false,
    }
}

/// Bytes arriving on the Redis protocol port. The decoder must give the
/// same frames and the same error however the bytes are split into reads
/// (whole, then in pieces the first byte sizes); every decoded frame, once
/// encoded (RESP2 and RESP3), decodes to itself; every request goes through
/// the command table, its keys, and the pure parsers of command arguments
/// (expiry options, glob patterns, slots).
pub fn resp(data: &[u8]) {
    use ringkv::resp::cmd;
    use ringkv::resp::frame::{Decoder, Protocol};
    let limit = 1024 * 1024;
    let decode = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut decoder = Decoder::new(limit);
        let mut buf = bytes::BytesMut::new();
        let mut frames = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(err) => return (frames, Some(err)),
                }
            }
        }
        (frames, None)
    };
    let whole = decode(&mut std::iter::once(data));
    let step = data.first().map_or(1, |b| (*b as usize % 7) + 1);
    let split = decode(&mut data.chunks(step));
    assert_eq!(whole, split, "decoding depends on how the bytes are split");
    for frame in &whole.0 {
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            let mut out = bytes::BytesMut::new();
            frame.encode(protocol, &mut out);
            // Our simple strings never hold CR or LF (the encoder replaces
            // them), so a decoded one that does cannot round-trip.
            if protocol == Protocol::Resp2 && !has_line_break(frame) {
                let mut decoder = Decoder::new(limit);
                let again = decoder.decode(&mut out).expect("our own encoding decodes");
                assert_eq!(again.as_ref(), Some(frame), "round trip of {frame:?}");
                assert!(out.is_empty(), "bytes left after {frame:?}");
            }
        }
        if let Ok(call) = cmd::prepare(frame.clone()) {
            let keys = call.keys();
            assert!(keys.len() <= call.args.len(), "more keys than arguments");
            for arg in &call.args {
                let _ = cmd::string::expiry_of("EX", arg, "set");
                let _ = cmd::string::expiry_of("PXAT", arg, "set");
                let _ = cmd::key_of(arg);
                let _ = cmd::keys::glob(arg, b"user:1000:profile");
                assert!(cmd::cluster::key_slot(arg) < cmd::cluster::SLOTS);
            }
        }
    }
}
