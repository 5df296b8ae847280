//! Unit tests of the store: the merge rule, streamed and chunked values,
//! the token index and leaves, hints, quarantine and verify, the reserve
//! and group commit.

use super::codec::{RECORD_FORMAT_V1, chunk_key, open_chunk, seal_chunk};
use super::durability::free_bytes;
use super::*;
use crate::ring::{Token, TokenRange};

fn meta(key: &str, ts: u64, value: &[u8]) -> RecordMeta {
    RecordMeta::whole(key, Version::new(ts, 1), value)
}

fn tombstone(key: &str, ts: u64) -> RecordMeta {
    RecordMeta {
        deleted: true,
        ..meta(key, ts, b"")
    }
}

fn space_is_empty(store: &Store, space: Space) -> bool {
    store
        .inner
        .engine
        .scan(space, b"", Bound::Unbounded, 1)
        .unwrap()
        .is_empty()
}

/// Every entry of `range`, read in pages of `page`.
fn paged(store: &Store, range: TokenRange, page: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let batch = store.keys_in_range(range, after.as_deref(), page).unwrap();
        let Some(last) = batch.last() else { return out };
        after = Some(last.cursor.clone());
        out.extend(batch.into_iter().map(|e| e.key));
    }
}

#[test]
fn the_token_index_lists_exactly_the_keys_of_a_range() {
    for (store, _dir) in stores() {
        let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            store
                .write_whole(meta(key, 10 + i as u64, b"v"), Bytes::from_static(b"v"))
                .unwrap();
        }
        let mut tokens: Vec<u64> = keys.iter().map(|k| Token::of_key(k.as_bytes()).0).collect();
        tokens.sort();
        let ranges = [
            (tokens[10], tokens[200]), // plain
            (tokens[250], tokens[40]), // wrapping
            (tokens[5], tokens[5]),    // the whole ring
            (u64::MAX, tokens[30]),    // starting at the top
            (0, u64::MAX),             // all but token 0
        ];
        for (start, end) in ranges {
            let range = TokenRange {
                start: Token(start),
                end: Token(end),
            };
            let mut expected: Vec<(u64, String)> = keys
                .iter()
                .map(|k| (Token::of_key(k.as_bytes()).0, k.clone()))
                .filter(|(t, _)| range.contains(Token(*t)))
                .collect();
            // Ring order from the range's start.
            expected.sort_by_key(|(t, k)| (t.wrapping_sub(start).wrapping_sub(1), k.clone()));
            let expected: Vec<String> = expected.into_iter().map(|(_, k)| k).collect();
            for page in [1, 7, 1000] {
                assert_eq!(
                    paged(&store, range, page),
                    expected,
                    "{range:?} page {page}"
                );
            }
        }
        // Dropped keys leave the index; tombstones stay in it, flagged.
        let first = &keys[0];
        let version = store
            .record(first)
            .unwrap()
            .unwrap()
            .meta
            .unwrap()
            .version();
        assert!(store.drop_if(first, version).unwrap());
        let mut gone = meta(&keys[1], 1000, b"");
        gone.deleted = true;
        gone.size = 0;
        gone.checksum = Bytes::new();
        store.write_whole(gone, Bytes::new()).unwrap();
        let whole = TokenRange {
            start: Token(0),
            end: Token(0),
        };
        let all = store.keys_in_range(whole, None, 1000).unwrap();
        assert_eq!(all.len(), 299);
        assert!(all.iter().all(|e| e.key != *first));
        let tomb = all.iter().find(|e| e.key == keys[1]).unwrap();
        assert!(tomb.deleted);
        assert_eq!(tomb.version.timestamp, 1000);
    }
}

/// The leaves of `range` computed from every record, the slow way.
fn leaves_by_brute_force(store: &Store, range: TokenRange) -> merkle::LeafHashes {
    let mut out = merkle::LeafHashes::default();
    for record in store.records_after(None, usize::MAX).unwrap() {
        let meta = record.meta.unwrap();
        let token = Token::of_key(meta.key.as_bytes());
        if range.contains(token) {
            *out.0.entry(merkle::leaf_of(token)).or_default() ^=
                merkle::entry_hash(&meta.key, meta.version(), meta.deleted);
        }
    }
    out.0.retain(|_, h| *h != 0);
    out
}

#[test]
fn writes_that_would_eat_into_the_disk_reserve_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let free = free_bytes(dir.path()).unwrap();
    let open = |reserve| {
        Store::open(&StorageOptions {
            data_dir: Some(dir.path().to_path_buf()),
            fsync: false,
            disk_reserve: reserve,
        })
        .unwrap()
    };
    {
        let store = open(free.saturating_mul(2));
        let err = store
            .write_whole(meta("k", 1, b"v"), Bytes::from_static(b"v"))
            .unwrap_err();
        assert!(matches!(err, Error::DiskFull), "{err}");
        assert!(matches!(
            store.begin_stream(meta("s", 1, b"")),
            Err(Error::DiskFull)
        ));
        assert_eq!(store.record("k").unwrap(), None);
    }
    let store = open(1024);
    store
        .write_whole(meta("k", 1, b"v"), Bytes::from_static(b"v"))
        .unwrap();
}

#[test]
fn live_keys_and_hints_are_counted_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        data_dir: Some(dir.path().to_path_buf()),
        fsync: false,
        disk_reserve: 0,
    };
    {
        let store = Store::open(&options).unwrap();
        for i in 0..50u64 {
            let key = format!("count-{i}");
            store
                .write_whole(meta(&key, 10, b"v"), Bytes::from_static(b"v"))
                .unwrap();
        }
        // An overwrite counts once, a tombstone not at all, a drop goes.
        store
            .write_whole(meta("count-0", 20, b"w"), Bytes::from_static(b"w"))
            .unwrap();
        store
            .write_whole(tombstone("count-1", 30), Bytes::new())
            .unwrap();
        let version = store.version_of("count-2").unwrap().unwrap();
        assert!(store.drop_if("count-2", version).unwrap());
        assert_eq!(store.key_count(), 48);

        let record = store.record("count-3").unwrap().unwrap();
        store.add_hint("127.0.0.1:1", &record).unwrap();
        store.add_hint("127.0.0.1:1", &record).unwrap(); // the same hint again
        store.add_hint("127.0.0.1:2", &record).unwrap();
        assert_eq!(store.hints_pending(), 2);
        let (raw, _, _) = store
            .hints_after(Bound::Unbounded, 1)
            .unwrap()
            .pop()
            .unwrap();
        store.remove_hint(raw.clone()).unwrap();
        store.remove_hint(raw).unwrap(); // already gone
        assert_eq!(store.hints_pending(), 1);
    }
    let store = Store::open(&options).unwrap();
    assert_eq!(store.key_count(), 48);
    assert_eq!(store.hints_pending(), 1);
}

#[test]
fn hash_tree_leaves_follow_every_write_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        data_dir: Some(dir.path().to_path_buf()),
        fsync: false,
        disk_reserve: 0,
    };
    let ranges = [
        TokenRange {
            start: Token(0),
            end: Token(0),
        },
        TokenRange {
            start: Token(u64::MAX / 3 + 12345),
            end: Token(u64::MAX / 3 * 2 + 999),
        },
        TokenRange {
            start: Token(u64::MAX - 1000),
            end: Token(u64::MAX / 5),
        },
    ];
    {
        let store = Store::open(&options).unwrap();
        for i in 0..2000u64 {
            let key = format!("tree-{i}");
            store
                .write_whole(meta(&key, 10, b"v"), Bytes::from_static(b"v"))
                .unwrap();
        }
        // Overwrites, tombstones, drops and a stale write that changes nothing.
        for i in 0..100u64 {
            let key = format!("tree-{i}");
            store
                .write_whole(meta(&key, 20, b"w"), Bytes::from_static(b"w"))
                .unwrap();
            let mut tomb = meta(&format!("tree-{}", 100 + i), 30, b"");
            tomb.deleted = true;
            tomb.checksum = Bytes::new();
            store.write_whole(tomb, Bytes::new()).unwrap();
            let dropped = format!("tree-{}", 200 + i);
            assert!(store.drop_if(&dropped, Version::new(10, 1)).unwrap());
            store
                .write_whole(meta(&key, 5, b"x"), Bytes::from_static(b"x"))
                .unwrap();
        }
        for range in ranges {
            assert_eq!(
                store.leaf_hashes(range).unwrap(),
                leaves_by_brute_force(&store, range)
            );
        }
    }
    let store = Store::open(&options).unwrap();
    for range in ranges {
        assert_eq!(
            store.leaf_hashes(range).unwrap(),
            leaves_by_brute_force(&store, range)
        );
    }
}

/// Found by the `record` fuzz target: a record naming an earlier key
/// than the one it is stored under sent the index build (and any
/// listing paged by the names) back to the same record, forever.
#[test]
fn a_record_naming_another_key_is_corrupt_and_cannot_loop_a_scan() {
    let engine = MemoryEngine::default();
    let misnamed = StoredRecord {
        meta: Some(meta("gone", 5, b"v")),
        inline_value: Some(Bytes::from_static(b"v")),
        chunk_count: 0,
        chunk_size: 0,
    };
    let good = StoredRecord {
        meta: Some(meta("small", 5, b"v")),
        ..misnamed.clone()
    };
    // No token index: the store builds it at open.
    engine
        .apply(vec![
            Op::Put(
                Space::Meta,
                "go\u{ee}e".as_bytes().to_vec(),
                encode_record(&misnamed),
            ),
            Op::Put(Space::Meta, b"small".to_vec(), encode_record(&good)),
        ])
        .unwrap();
    let options = StorageOptions {
        data_dir: None,
        fsync: false,
        disk_reserve: 0,
    };
    let store = Store::open_engine(Arc::new(engine), &options).unwrap();
    let whole = TokenRange {
        start: Token(0),
        end: Token(0),
    };
    let indexed: Vec<String> = store
        .keys_in_range(whole, None, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(indexed, ["small"]);
    assert!(matches!(
        store.record("go\u{ee}e"),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        store.list("", None, 10),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(store.list("s", None, 10).unwrap().len(), 1);
}

#[test]
fn a_data_dir_without_the_index_gets_it_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        data_dir: Some(dir.path().to_path_buf()),
        fsync: false,
        disk_reserve: 0,
    };
    {
        let store = Store::open(&options).unwrap();
        for i in 0..50 {
            let key = format!("old-{i}");
            store
                .write_whole(meta(&key, 5, b"v"), Bytes::from_static(b"v"))
                .unwrap();
        }
        // As a data dir from before the index existed.
        let entries = store
            .inner
            .engine
            .scan(Space::ByToken, b"", Bound::Unbounded, 100)
            .unwrap();
        let ops = entries
            .into_iter()
            .map(|(k, _)| Op::Delete(Space::ByToken, k))
            .collect();
        store.inner.engine.apply(ops).unwrap();
        store.persist().unwrap();
    }
    let store = Store::open(&options).unwrap();
    let whole = TokenRange {
        start: Token(7),
        end: Token(7),
    };
    assert_eq!(store.keys_in_range(whole, None, 100).unwrap().len(), 50);
}

#[test]
fn hints_are_kept_per_target_and_dropped_when_delivered() {
    for (store, _dir) in stores() {
        let record = |key: &str, ts: u64| StoredRecord {
            meta: Some(meta(key, ts, b"v")),
            inline_value: Some(Bytes::from_static(b"v")),
            chunk_count: 0,
            chunk_size: 0,
        };
        store.add_hint("b:1", &record("k1", 1)).unwrap();
        store.add_hint("b:1", &record("k2", 2)).unwrap();
        store.add_hint("a:1", &record("k1", 3)).unwrap();
        let all = store.hints_after(Bound::Unbounded, 10).unwrap();
        let targets: Vec<_> = all.iter().map(|(_, t, _)| t.as_str()).collect();
        assert_eq!(targets, ["a:1", "b:1", "b:1"]);
        // Skipping past a target's hints lands on the next target's.
        let after_a = Bound::Excluded(Store::hints_end_of("a:1"));
        let rest = store.hints_after(after_a, 10).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].2.meta.as_ref().unwrap().key, "k1");
        for (raw, _, _) in all {
            store.remove_hint(raw).unwrap();
        }
        assert!(store.hints_after(Bound::Unbounded, 10).unwrap().is_empty());
    }
}

#[test]
fn drop_if_removes_only_the_named_version() {
    for (store, _dir) in stores() {
        let value = vec![7u8; INLINE_MAX_BYTES * 2];
        let mut m = meta("big", 5, &value);
        m.size = value.len() as u64;
        store.write_whole(m, Bytes::from(value)).unwrap();
        let v = |ts| Version::new(ts, 1);
        assert!(!store.drop_if("big", v(4)).unwrap());
        assert!(store.record("big").unwrap().is_some());
        assert!(store.drop_if("big", v(5)).unwrap());
        assert!(store.record("big").unwrap().is_none());
        assert!(space_is_empty(&store, Space::Chunks));
        assert!(!store.drop_if("big", v(5)).unwrap());
    }
}

/// Every leaf hash of the whole ring, as kept and as recomputed.
fn leaves_match(store: &Store) -> bool {
    let whole = TokenRange {
        start: Token(3),
        end: Token(3),
    };
    store.leaf_hashes(whole).unwrap() == leaves_by_brute_force(store, whole)
}

fn v(ts: u64) -> Version {
    Version::new(ts, 1)
}

/// A large value of `len` bytes written whole at `ts`.
fn write_big(store: &Store, key: &str, ts: u64, value: &[u8]) {
    let mut m = meta(key, ts, value);
    m.size = value.len() as u64;
    store.write_whole(m, Bytes::copy_from_slice(value)).unwrap();
}

/// `m` with its expiry changed at `touch` to `expires_at`.
fn touched(m: &RecordMeta, touch: u64, expires_at: u64) -> RecordMeta {
    RecordMeta {
        version: Some(m.version().touched(touch).into()),
        expires_at,
        ..m.clone()
    }
}

#[test]
fn an_expiry_change_replaces_its_value_only_and_only_while_newest() {
    for (store, _dir) in stores() {
        let value = Bytes::from_static(b"v1");
        let first = meta("k", 10, &value);
        store.write_whole(first.clone(), value.clone()).unwrap();
        // EXPIRE: same value, a touch, an expiry.
        let expire = touched(&first, 50, 1_000);
        assert!(
            store
                .write_whole(expire.clone(), value.clone())
                .unwrap()
                .applied
        );
        let held = store.record("k").unwrap().unwrap();
        assert_eq!(held.meta.as_ref().unwrap().expires_at, 1_000);
        assert_eq!(store.inline_value(&held).unwrap(), Some(value.clone()));
        // An earlier change of the same value loses to it; a later wins.
        assert!(
            !store
                .write_whole(touched(&first, 40, 7), value.clone())
                .unwrap()
                .applied
        );
        let persist = touched(&first, 60, 0);
        assert!(store.write_whole(persist, value.clone()).unwrap().applied);
        assert_eq!(
            store.record("k").unwrap().unwrap().meta.unwrap().expires_at,
            0
        );
        // A later write wins over every change of the earlier value,
        // and no change of that value can come back over it.
        let second = meta("k", 11, b"v2");
        assert!(
            store
                .write_whole(second, Bytes::from_static(b"v2"))
                .unwrap()
                .applied
        );
        let late = touched(&first, 99, 5);
        assert!(!store.write_whole(late, value.clone()).unwrap().applied);
        let held = store.record("k").unwrap().unwrap();
        assert_eq!(held.inline_value, Some(Bytes::from_static(b"v2")));
        assert!(leaves_match(&store));
    }
}

#[test]
fn an_expiry_change_of_a_large_value_keeps_its_chunks() {
    for (store, dir) in stores() {
        let value = big(3 * CHUNK_SIZE_BYTES + 17);
        write_big(&store, "big", 10, &value);
        let base = store.record("big").unwrap().unwrap().meta.unwrap();
        // The record alone (no bytes): the value held at its base stays.
        let expire = touched(&base, 20, 5_000);
        assert!(
            store
                .write_whole(expire.clone(), Bytes::new())
                .unwrap()
                .applied
        );
        assert_eq!(read_back(&store, "big"), value);
        // A whole write of the touched version (read repair of a replica
        // that lacked the change) rewrites the same chunks, removes none.
        let again = touched(&base, 30, 6_000);
        assert!(
            store
                .write_whole(again, Bytes::from(value.clone()))
                .unwrap()
                .applied
        );
        assert_eq!(read_back(&store, "big"), value);
        // So does a streamed one, applied or not.
        for (touch, applied) in [(40, true), (35, false)] {
            let mut writer = store.begin_stream(touched(&base, touch, 7_000)).unwrap();
            writer.write(&value).unwrap();
            let sum = blake3::hash(&value);
            let outcome = writer.finish(value.len() as u64, sum.as_bytes()).unwrap();
            assert_eq!(outcome.applied, applied);
            assert_eq!(read_back(&store, "big"), value);
        }
        // An aborted stream of the same base leaves the chunks too.
        drop(store.begin_stream(touched(&base, 45, 1)).unwrap());
        assert_eq!(read_back(&store, "big"), value);
        assert!(leaves_match(&store));
        if let Some(dir) = dir {
            drop(store);
            let reopened = Store::open(&StorageOptions {
                data_dir: Some(dir.path().to_path_buf()),
                fsync: false,
                disk_reserve: 0,
            })
            .unwrap();
            assert_eq!(read_back(&reopened, "big"), value);
            assert!(leaves_match(&reopened));
            let entry = reopened
                .keys_in_range(
                    TokenRange {
                        start: Token(0),
                        end: Token(0),
                    },
                    None,
                    10,
                )
                .unwrap();
            assert_eq!(entry[0].expires_at, 7_000);
            assert_eq!(entry[0].version, base.version().touched(40));
        }
    }
}

#[test]
fn an_expiry_change_without_bytes_needs_the_value_it_changes() {
    for (store, _dir) in stores() {
        let value = big(CHUNK_SIZE_BYTES + 1);
        let m = meta("big", 10, &value);
        // Nothing held, or another value held: NotFound.
        let expire = touched(&m, 20, 5_000);
        assert!(matches!(
            store.write_whole(expire.clone(), Bytes::new()),
            Err(Error::NotFound { .. })
        ));
        write_big(&store, "big", 9, &value);
        assert!(matches!(
            store.write_whole(expire, Bytes::new()),
            Err(Error::NotFound { .. })
        ));
    }
}

#[test]
fn expiring_values_are_counted_for_collection() {
    for (store, _dir) in stores() {
        let whole = TokenRange {
            start: Token(0),
            end: Token(0),
        };
        let mut m = meta("e", 10, b"x");
        store
            .write_whole(m.clone(), Bytes::from_static(b"x"))
            .unwrap();
        assert!(store.leaves_to_collect(whole).is_empty());
        m = touched(&m, 11, 123);
        store
            .write_whole(m.clone(), Bytes::from_static(b"x"))
            .unwrap();
        assert_eq!(store.leaves_to_collect(whole).len(), 1);
        assert_eq!(store.key_count(), 1);
        store
            .write_whole(touched(&m, 12, 0), Bytes::from_static(b"x"))
            .unwrap();
        assert!(store.leaves_to_collect(whole).is_empty());
        assert!(leaves_match(&store));
    }
}

#[test]
fn quarantine_drops_a_copy_whose_record_cannot_be_read() {
    for (store, _dir) in stores() {
        store
            .write_whole(meta("k", 5, b"good"), Bytes::from_static(b"good"))
            .unwrap();
        store
            .write_whole(meta("other", 5, b"o"), Bytes::from_static(b"o"))
            .unwrap();
        // Bytes changed behind the store's back: the record is unreadable.
        store
            .inner
            .engine
            .apply(vec![Op::Put(
                Space::Meta,
                b"k".to_vec(),
                Bytes::from_static(&[RECORD_FORMAT_V1, 0xff, 0xff]),
            )])
            .unwrap();
        assert!(matches!(store.record("k"), Err(Error::Corrupt { .. })));
        assert!(matches!(
            store.verify("k", v(5), |_| {}),
            Err(Error::Corrupt { .. })
        ));
        // Another version than the index names: left alone.
        assert!(!store.quarantine("k", Some(v(4))).unwrap());
        assert!(store.quarantine("k", Some(v(5))).unwrap());
        assert_eq!(store.quarantined(), 1);
        assert!(store.record("k").unwrap().is_none());
        let whole = TokenRange {
            start: Token(0),
            end: Token(0),
        };
        let keys: Vec<String> = store
            .keys_in_range(whole, None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["other"]);
        assert!(leaves_match(&store));
        // Nothing left to drop; and the same version is accepted again.
        assert!(!store.quarantine("k", None).unwrap());
        assert!(
            store
                .write_whole(meta("k", 5, b"good"), Bytes::from_static(b"good"))
                .unwrap()
                .applied
        );
        assert_eq!(store.verify("k", v(5), |_| {}).unwrap(), Some(4));
        assert!(leaves_match(&store));
    }
}

#[test]
fn quarantine_drops_a_large_value_with_a_corrupt_chunk() {
    for (store, _dir) in stores() {
        let value = big(CHUNK_SIZE_BYTES * 2 + 77);
        write_big(&store, "big", 7, &value);
        let mut paced = 0;
        assert_eq!(
            store.verify("big", v(7), |n| paced += n).unwrap(),
            Some(value.len() as u64)
        );
        assert_eq!(paced, value.len() as u64);
        // A flipped byte in chunk 1.
        let key = chunk_key("big", v(7), 1);
        let raw = store
            .inner
            .engine
            .get(Space::Chunks, &key)
            .unwrap()
            .unwrap();
        let mut bad = raw.to_vec();
        bad[10] ^= 0x40;
        store
            .inner
            .engine
            .apply(vec![Op::Put(Space::Chunks, key, Bytes::from(bad))])
            .unwrap();
        assert!(matches!(
            store.verify("big", v(7), |_| {}),
            Err(Error::Corrupt { .. })
        ));
        assert!(store.quarantine("big", Some(v(7))).unwrap());
        assert!(store.record("big").unwrap().is_none());
        assert!(space_is_empty(&store, Space::Chunks));
        assert!(space_is_empty(&store, Space::ByToken));
        assert!(leaves_match(&store));
        // The good copy of the same version goes in again.
        write_big(&store, "big", 7, &value);
        assert_eq!(read_back(&store, "big"), value);
        assert!(leaves_match(&store));
    }
}

#[test]
fn verify_reports_a_missing_chunk_and_skips_a_replaced_value() {
    for (store, _dir) in stores() {
        let value = big(CHUNK_SIZE_BYTES + 5);
        write_big(&store, "big", 7, &value);
        assert_eq!(store.verify("big", v(6), |_| {}).unwrap(), None);
        store
            .inner
            .engine
            .apply(vec![Op::Delete(Space::Chunks, chunk_key("big", v(7), 1))])
            .unwrap();
        assert!(matches!(
            store.verify("big", v(7), |_| {}),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(store.verify("absent", v(7), |_| {}).unwrap(), None);
    }
}

#[test]
fn a_write_over_an_unreadable_record_drops_it_first() {
    for (store, _dir) in stores() {
        store
            .write_whole(meta("k", 5, b"old"), Bytes::from_static(b"old"))
            .unwrap();
        store
            .inner
            .engine
            .apply(vec![Op::Put(
                Space::Meta,
                b"k".to_vec(),
                Bytes::from_static(b"\x07garbage"),
            )])
            .unwrap();
        let outcome = store
            .write_whole(meta("k", 5, b"old"), Bytes::from_static(b"old"))
            .unwrap();
        assert!(outcome.applied);
        assert_eq!(store.quarantined(), 1);
        let rec = store.record("k").unwrap().unwrap();
        assert_eq!(store.inline_value(&rec).unwrap().unwrap(), "old");
        assert!(leaves_match(&store));
    }
}

#[test]
fn quarantine_keeps_the_chunks_of_a_write_in_flight() {
    for (store, _dir) in stores() {
        let old = big(CHUNK_SIZE_BYTES + 9);
        write_big(&store, "big", 7, &old);
        let new = big(CHUNK_SIZE_BYTES * 2 + 3);
        let mut header = meta("big", 8, b"");
        header.checksum.clear();
        header.size = 0;
        let mut writer = store.begin_stream(header).unwrap();
        writer.write(&new[..CHUNK_SIZE_BYTES + 1]).unwrap();
        assert!(store.quarantine("big", None).unwrap());
        writer.write(&new[CHUNK_SIZE_BYTES + 1..]).unwrap();
        let sum = blake3::hash(&new);
        assert!(
            writer
                .finish(new.len() as u64, sum.as_bytes())
                .unwrap()
                .applied
        );
        assert_eq!(read_back(&store, "big"), new);
        assert_eq!(
            store.verify("big", v(8), |_| {}).unwrap(),
            Some(new.len() as u64)
        );
        assert!(leaves_match(&store));
    }
}

fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    vec![
        (
            Store::open(&StorageOptions {
                data_dir: None,
                fsync: false,
                disk_reserve: 0,
            })
            .unwrap(),
            None,
        ),
        (
            Store::open(&StorageOptions {
                data_dir: Some(dir.path().to_path_buf()),
                fsync: false,
                disk_reserve: 0,
            })
            .unwrap(),
            Some(dir),
        ),
    ]
}

#[test]
fn older_writes_never_replace_newer_ones() {
    for (store, _dir) in stores() {
        let new = store
            .write_whole(meta("k", 20, b"new"), Bytes::from_static(b"new"))
            .unwrap();
        assert!(new.applied);
        let old = store
            .write_whole(meta("k", 10, b"old"), Bytes::from_static(b"old"))
            .unwrap();
        assert!(!old.applied);
        assert_eq!(old.current.timestamp, 20);
        let rec = store.record("k").unwrap().unwrap();
        assert_eq!(
            store.inline_value(&rec).unwrap().unwrap(),
            Bytes::from_static(b"new")
        );
        // A tombstone older than the value does not delete it either.
        assert!(
            !store
                .write_whole(tombstone("k", 15), Bytes::new())
                .unwrap()
                .applied
        );
        assert!(
            store
                .write_whole(tombstone("k", 25), Bytes::new())
                .unwrap()
                .applied
        );
        assert!(store.record("k").unwrap().unwrap().meta.unwrap().deleted);
        // And an old value does not resurrect a deleted key.
        assert!(
            !store
                .write_whole(meta("k", 22, b"x"), Bytes::from_static(b"x"))
                .unwrap()
                .applied
        );
    }
}

#[test]
fn bad_writes_are_rejected() {
    for (store, _dir) in stores() {
        let mut m = meta("k", 1, b"abc");
        m.checksum = Bytes::from(vec![0; 32]);
        assert!(store.write_whole(m, Bytes::from_static(b"abc")).is_err());
        assert!(
            store
                .write_whole(meta("k", 1, b"ab"), Bytes::from_static(b"abc"))
                .is_err()
        );
        assert!(store.write_whole(meta("", 1, b""), Bytes::new()).is_err());
        assert!(store.write_whole(meta("k", 0, b""), Bytes::new()).is_err());
        assert!(store.record("k").unwrap().is_none());
    }
}

fn big(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Reads every chunk of the committed `key` back.
fn read_back(store: &Store, key: &str) -> Vec<u8> {
    let rec = store.record(key).unwrap().unwrap();
    let version = rec.meta.as_ref().unwrap().version();
    let mut back = Vec::new();
    for i in 0..rec.chunk_count {
        back.extend_from_slice(&store.read_chunk(key, version, i).unwrap());
    }
    back
}

#[test]
fn concurrent_writes_of_one_version_never_break_the_committed_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        data_dir: Some(dir.path().to_path_buf()),
        fsync: false,
        disk_reserve: 0,
    };
    let value = big(CHUNK_SIZE_BYTES * 2 + 99);
    let sum = blake3::hash(&value);
    let header = || {
        let mut h = meta("same", 9, b"");
        h.checksum.clear();
        h.size = 0;
        h
    };
    {
        let store = Store::open(&options).unwrap();
        let mut late = store.begin_stream(header()).unwrap();
        let mut dropped = store.begin_stream(header()).unwrap();
        let mut crashed = store.begin_stream(header()).unwrap();
        let mut first = store.begin_stream(header()).unwrap();
        first.write(&value).unwrap();
        assert!(
            first
                .finish(value.len() as u64, sum.as_bytes())
                .unwrap()
                .applied
        );
        // The same version again: not applied, and the committed chunks stay.
        late.write(&value).unwrap();
        assert!(
            !late
                .finish(value.len() as u64, sum.as_bytes())
                .unwrap()
                .applied
        );
        assert_eq!(read_back(&store, "same"), value);
        // One abandoned midway.
        dropped.write(&value[..CHUNK_SIZE_BYTES + 5]).unwrap();
        drop(dropped);
        assert_eq!(read_back(&store, "same"), value);
        // One cut off by a crash: its marker stays for the next start.
        crashed.write(&value[..CHUNK_SIZE_BYTES]).unwrap();
        crashed.finished = true; // as if the process died here
        drop(crashed);
        store.persist().unwrap();
    }
    let store = Store::open(&options).unwrap();
    assert_eq!(read_back(&store, "same"), value);
    assert!(space_is_empty(&store, Space::Pending));
}

#[test]
fn streamed_values_are_chunked_and_read_back() {
    for (store, _dir) in stores() {
        let value = big(CHUNK_SIZE_BYTES * 2 + 1234);
        let mut header = meta("big", 5, b"");
        header.checksum.clear();
        header.size = 0;
        let mut writer = store.begin_stream(header).unwrap();
        for piece in value.chunks(70_000) {
            writer.write(piece).unwrap();
        }
        let sum = blake3::hash(&value);
        let outcome = writer.finish(value.len() as u64, sum.as_bytes()).unwrap();
        assert!(outcome.applied);
        let rec = store.record("big").unwrap().unwrap();
        assert_eq!(rec.chunk_count, 3);
        let mut back = Vec::new();
        for i in 0..rec.chunk_count {
            back.extend_from_slice(&store.read_chunk("big", Version::new(5, 1), i).unwrap());
        }
        assert_eq!(back, value);
    }
}

#[test]
fn an_unfinished_stream_leaves_nothing_behind() {
    for (store, _dir) in stores() {
        let mut writer = store.begin_stream(meta("half", 5, b"")).unwrap();
        writer.write(&big(CHUNK_SIZE_BYTES + 10)).unwrap();
        drop(writer);
        assert!(store.record("half").unwrap().is_none());
        assert!(space_is_empty(&store, Space::Chunks));
        assert!(space_is_empty(&store, Space::Pending));
    }
}

#[test]
fn a_stream_whose_trailer_lies_is_not_committed() {
    for (store, _dir) in stores() {
        let mut writer = store.begin_stream(meta("lie", 5, b"")).unwrap();
        writer.write(b"hello").unwrap();
        assert!(writer.finish(5, blake3::hash(b"jello").as_bytes()).is_err());
        assert!(store.record("lie").unwrap().is_none());
    }
}

#[test]
fn chunks_left_by_a_crash_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions {
        data_dir: Some(dir.path().to_path_buf()),
        fsync: false,
        disk_reserve: 0,
    };
    {
        let store = Store::open(&options).unwrap();
        let mut writer = store.begin_stream(meta("crash", 5, b"")).unwrap();
        writer.write(&big(CHUNK_SIZE_BYTES * 2)).unwrap();
        writer.finished = true; // simulate a crash: Drop does not clean up
    }
    let store = Store::open(&options).unwrap();
    assert!(space_is_empty(&store, Space::Chunks));
    assert!(store.record("crash").unwrap().is_none());
}

#[test]
fn a_newer_value_removes_the_old_chunks() {
    for (store, _dir) in stores() {
        let v1 = big(CHUNK_SIZE_BYTES + 1);
        store
            .write_whole(meta("k", 1, &v1), Bytes::from(v1.clone()))
            .unwrap();
        store
            .write_whole(meta("k", 2, b"small"), Bytes::from_static(b"small"))
            .unwrap();
        assert!(space_is_empty(&store, Space::Chunks));
    }
}

#[test]
fn corrupted_chunks_and_records_are_detected() {
    assert!(open_chunk(Bytes::from_static(b"abc")).is_err());
    let mut sealed = seal_chunk(b"hello world").to_vec();
    sealed[0] ^= 1;
    assert!(matches!(
        open_chunk(Bytes::from(sealed)),
        Err(Error::Corrupt { .. })
    ));
    assert!(decode_record(&[]).is_err());
    assert!(decode_record(&[9, 1, 2]).is_err());
    assert!(decode_record(&[1, 0xff, 0xff]).is_err());
}

#[test]
fn list_pages_through_keys() {
    for (store, _dir) in stores() {
        for k in ["a/1", "a/2", "a/3", "b/1"] {
            store
                .write_whole(meta(k, 1, b"v"), Bytes::from_static(b"v"))
                .unwrap();
        }
        let first = store.list("a/", None, 2).unwrap();
        assert_eq!(
            first.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        let next = store.list("a/", Some("a/2"), 2).unwrap();
        assert_eq!(
            next.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["a/3"]
        );
    }
}

#[tokio::test]
async fn group_commit_answers_every_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StorageOptions {
        data_dir: Some(dir.path().to_path_buf()),
        fsync: true,
        disk_reserve: 0,
    })
    .unwrap();
    let waits: Vec<_> = (0..20)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.sync().await })
        })
        .collect();
    for w in waits {
        w.await.unwrap().unwrap();
    }
}

/// A memory engine whose fsync fails with the error `fail` makes.
struct FailingSync {
    /// Where the batches go.
    engine: MemoryEngine,
    /// The error every `persist` returns.
    fail: fn() -> Error,
}

impl Engine for FailingSync {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Bytes>> {
        self.engine.get(space, key)
    }
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.engine.scan(space, prefix, start, limit)
    }
    fn scan_keys(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        self.engine.scan_keys(space, prefix, start, limit)
    }
    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        self.engine.apply(ops)
    }
    fn persist(&self) -> Result<()> {
        Err((self.fail)())
    }
    fn disk_bytes(&self) -> u64 {
        self.engine.disk_bytes()
    }
}

#[tokio::test]
async fn a_full_disk_found_at_fsync_answers_507() {
    let failures: [(fn() -> Error, u16); 4] = [
        // ENOSPC as fjall reports it, mapped by `Error::from_storage`.
        (
            || Error::from_storage(fjall::Error::Io(std::io::Error::from_raw_os_error(28))),
            507,
        ),
        // ENOSPC and EDQUOT as plain I/O errors.
        (|| Error::from(std::io::Error::from_raw_os_error(28)), 507),
        (|| Error::from(std::io::Error::from_raw_os_error(122)), 507),
        // Any other failure stays a server error.
        (|| Error::from(std::io::Error::from_raw_os_error(5)), 500),
    ];
    for (fail, status) in failures {
        let engine = Arc::new(FailingSync {
            engine: MemoryEngine::default(),
            fail,
        });
        let store = Store::open_engine(
            engine,
            &StorageOptions {
                data_dir: None,
                fsync: true,
                disk_reserve: 0,
            },
        )
        .unwrap();
        let waits: Vec<_> = (0..4)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.sync().await })
            })
            .collect();
        for w in waits {
            let err = w.await.unwrap().unwrap_err();
            assert_eq!(err.http_status(), status, "{err:?} from {:?}", fail());
        }
    }
}
