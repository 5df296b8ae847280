//! Writes the seed inputs of the `rpc` and `record` targets, which are
//! binary: real protobuf messages and a real store's contents, in the
//! harnesses' input formats. Run from `fuzz/`: `cargo run --example seeds`.
//! The text targets' seeds are written by hand.

use std::ops::Bound;
use std::path::Path;

use bytes::Bytes;
use prost::Message;
use ringkv::proto::{
    BalanceRequest, PingRequest, ReadRequest, ReadStreamRequest, RecordMeta, ScanRequest,
    SyncRequest, TokenRange, TreeRequest, WriteChunk, WriteRequest, WriteTrailer, write_chunk,
};
use ringkv::storage::{Engine, Space, StorageOptions, Store};
use ringkv::version::Version;

fn main() -> std::io::Result<()> {
    let corpus = Path::new("corpus");
    let rpc = corpus.join("rpc");
    let record = corpus.join("record");
    std::fs::create_dir_all(&rpc)?;
    std::fs::create_dir_all(&record)?;

    let version = Version::new(1_764_000_000_000_000_000, 7);
    let value = Bytes::from_static(b"hello");
    let meta = |key: &str, deleted: bool, value: &[u8]| RecordMeta {
        key: key.to_string(),
        version: Some(version.into()),
        deleted,
        content_type: if deleted {
            String::new()
        } else {
            "text/plain".into()
        },
        size: value.len() as u64,
        checksum: Bytes::copy_from_slice(blake3::hash(value).as_bytes()),
        expires_at: 0,
    };
    let range = TokenRange {
        start: 0,
        end: 1 << 63,
    };
    let calls: Vec<(&str, u8, Vec<Vec<u8>>)> = vec![
        (
            "write",
            0,
            vec![
                WriteRequest {
                    meta: Some(meta("a", false, &value)),
                    value: value.clone(),
                    fence: None,
                }
                .encode_to_vec(),
            ],
        ),
        (
            "write-tombstone",
            0,
            vec![
                WriteRequest {
                    meta: Some(meta("a", true, b"")),
                    value: Bytes::new(),
                    fence: None,
                }
                .encode_to_vec(),
            ],
        ),
        (
            "write-stream",
            1,
            vec![
                WriteChunk {
                    part: Some(write_chunk::Part::Header(meta("big", false, b""))),
                    fence: None,
                }
                .encode_to_vec(),
                WriteChunk {
                    part: Some(write_chunk::Part::Data(value.clone())),
                    fence: None,
                }
                .encode_to_vec(),
                WriteChunk {
                    part: Some(write_chunk::Part::Trailer(WriteTrailer {
                        size: value.len() as u64,
                        checksum: Bytes::copy_from_slice(blake3::hash(&value).as_bytes()),
                    })),
                    fence: None,
                }
                .encode_to_vec(),
            ],
        ),
        (
            "read",
            2,
            vec![
                ReadRequest {
                    key: "a".into(),
                    inline_max: 1024,
                    fence: None,
                }
                .encode_to_vec(),
            ],
        ),
        (
            "read-stream",
            3,
            vec![
                ReadStreamRequest {
                    key: "big".into(),
                    version: Some(version.into()),
                    offset: 1,
                    length: 3,
                }
                .encode_to_vec(),
            ],
        ),
        (
            "scan",
            4,
            vec![
                ScanRequest {
                    ranges: vec![range, TokenRange { start: 5, end: 5 }],
                    inline_max: 64,
                    limit: 0,
                }
                .encode_to_vec(),
            ],
        ),
        ("sync", 5, vec![SyncRequest { digest: 42 }.encode_to_vec()]),
        (
            "tree",
            6,
            vec![
                TreeRequest {
                    range: Some(range),
                    level: 2,
                    nodes: vec![0, 1, 3],
                }
                .encode_to_vec(),
            ],
        ),
        ("balance", 7, vec![BalanceRequest {}.encode_to_vec()]),
        ("ping", 8, vec![PingRequest {}.encode_to_vec()]),
    ];
    for (name, method, messages) in calls {
        let mut input = vec![method];
        for message in messages {
            input.extend_from_slice(&(message.len() as u16).to_be_bytes());
            input.extend_from_slice(&message);
        }
        std::fs::write(rpc.join(name), input)?;
    }

    // A store holding a small value, a tombstone, a chunked value, a
    // streamed write left half-done and a hint, dumped space by space.
    let runtime = tokio::runtime::Runtime::new()?;
    let _guard = runtime.enter();
    let dumped = ringkv::storage::MemoryEngine::default();
    let dumped: std::sync::Arc<dyn Engine> = std::sync::Arc::new(dumped);
    let store = Store::open_engine(
        dumped.clone(),
        &StorageOptions {
            data_dir: None,
            fsync: false,
            disk_reserve: 0,
        },
    )
    .expect("a memory store opens");
    store
        .write_whole(meta("small", false, &value), value.clone())
        .expect("small write");
    store
        .write_whole(meta("gone", true, b""), Bytes::new())
        .expect("tombstone");
    let large = vec![7u8; ringkv::storage::CHUNK_SIZE_BYTES + 10];
    let mut stream = store
        .begin_stream(meta("large", false, b""))
        .expect("stream");
    stream.write(&large).expect("stream data");
    stream
        .finish(large.len() as u64, blake3::hash(&large).as_bytes())
        .expect("stream end");
    let mut half = store
        .begin_stream(meta("half", false, b""))
        .expect("stream");
    half.write(&[1u8; 100]).expect("stream data");
    std::mem::forget(half);
    let small = store.record("small").expect("read").expect("held");
    store.add_hint("127.0.0.1:7001", &small).expect("hint");
    let mut whole = Vec::new();
    for (code, space) in [
        (0u8, Space::Meta),
        (1, Space::Chunks),
        (2, Space::Pending),
        (3, Space::Hints),
        (4, Space::ByToken),
    ] {
        let mut one = Vec::new();
        for (key, value) in dumped
            .scan(space, b"", Bound::Unbounded, 100)
            .expect("scan")
        {
            // Chunks are cut to 256 bytes (their checksums then fail):
            // short inputs fuzz faster.
            let value = &value[..value.len().min(256)];
            for out in [&mut one, &mut whole] {
                out.push(code);
                out.extend_from_slice(&(key.len() as u16).to_be_bytes());
                out.extend_from_slice(&key);
                out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
        std::fs::write(record.join(format!("space-{code}")), one)?;
    }
    std::fs::write(record.join("store"), whole)?;
    Ok(())
}
