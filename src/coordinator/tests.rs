//! Unit tests of the coordinator's decisions, against fake replicas
//! (`rpc/fake.rs`) on a fixed ring (`membership/fixed.rs`): no network,
//! no gossip. Each test builds a cluster of fakes, sets their faults, and
//! drives a real [`Coordinator`] through its public calls.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::*;
use crate::membership::PeerState;
use crate::membership::fixed::{FixedMembership, normal_peer};
use crate::proto::RecordMeta;
use crate::ring::{Token, replica_set_hash};
use crate::rpc::fake::{Call, FakeReplica, Faults};
use crate::storage::{StorageOptions, Store};
use crate::version::Version;

/// A coordinator (node `coord:1`, no replica itself) and fake replicas.
struct Cluster {
    coordinator: Coordinator,
    /// Replica `i` stands for node `r{i}:1`.
    replicas: Vec<Arc<FakeReplica>>,
    /// The coordinator's rings.
    membership: Arc<FixedMembership>,
    /// The coordinator's own store, where its hints go.
    store: Store,
}

fn node(i: usize) -> NodeId {
    NodeId::parse(&format!("r{i}:1")).unwrap()
}

/// Spread tokens for member `i`, as the ring tests choose them.
fn tokens(i: usize) -> Vec<Token> {
    (0..8u64)
        .map(|t| Token((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t << 56)))
        .collect()
}

fn peers(members: usize) -> Vec<PeerState> {
    (0..members)
        .map(|i| normal_peer(node(i).as_str(), &tokens(i), 1))
        .collect()
}

/// `fakes` replicas; the coordinator's ring has the first `members` of
/// them with N = `n`. Reads ask R replicas (no full reads).
fn cluster(fakes: usize, members: usize, n: usize) -> Cluster {
    cluster_with(fakes, members, n, 0)
}

/// As [`cluster`], one read in `full_read_every` asking all replicas.
fn cluster_with(fakes: usize, members: usize, n: usize, full_read_every: u64) -> Cluster {
    let membership = Arc::new(FixedMembership::new(peers(members), n));
    let replicas: Vec<Arc<FakeReplica>> = (0..fakes)
        .map(|i| FakeReplica::new(&node(i)).unwrap())
        .collect();
    let store = Store::open(&StorageOptions {
        data_dir: None,
        fsync: false,
        disk_reserve: 0,
    })
    .unwrap();
    let me = NodeId::parse("coord:1").unwrap();
    let local = LocalReplica {
        store: store.clone(),
        clock: Arc::new(Clock::new(me.hash64())),
        catching_up: Arc::new(AtomicBool::new(false)),
    };
    let coordinator = Coordinator::with_fakes(
        me,
        membership.clone(),
        local,
        replicas.clone(),
        CoordinatorOptions {
            max_value_size: 1 << 30,
            hints: true,
            ring_fence: true,
            full_read_every,
        },
    );
    Cluster {
        coordinator,
        replicas,
        membership,
        store,
    }
}

fn down(node: &NodeId) -> Error {
    Error::Rpc {
        node: node.clone(),
        reason: "connection refused".into(),
    }
}

fn full(_: &NodeId) -> Error {
    Error::DiskFull
}

fn failing() -> Faults {
    Faults {
        fail: Some(down),
        ..Faults::default()
    }
}

/// A replica that answers only once `gate` is closed.
fn held(gate: &Arc<Semaphore>) -> Faults {
    Faults {
        gate: Some(gate.clone()),
        ..Faults::default()
    }
}

/// The record of `value` for `key` at `version`.
fn record(key: &str, version: Version, value: &[u8]) -> RecordMeta {
    RecordMeta::whole(key, version, value)
}

fn tombstone(key: &str, version: Version) -> RecordMeta {
    RecordMeta {
        deleted: true,
        ..record(key, version, b"")
    }
}

/// A version stamped now (plus `ms`), so that the coordinator's clock
/// takes it as it takes a peer's.
fn version_in(ms: u64) -> Version {
    Version::new(crate::version::system_time_ns() + ms * 1_000_000, 7)
}

/// The targets of the hints kept in `store`.
fn hinted(store: &Store) -> Vec<String> {
    store
        .hints_after(Bound::Unbounded, 100)
        .unwrap()
        .into_iter()
        .map(|(_, target, _)| target)
        .collect()
}

/// Waits up to 5 s for `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_write_is_acknowledged_at_quorum_before_a_slow_replica_and_hints_a_failed_one() {
    let c = cluster(5, 5, 5);
    let gate = Arc::new(Semaphore::new(0));
    c.replicas[0].set_faults(failing());
    c.replicas[1].set_faults(held(&gate));
    let put = c.coordinator.put_bytes(
        "k",
        Bytes::from_static(b"v"),
        Expiry::Never,
        Quorum::Majority,
    );
    let written = tokio::time::timeout(Duration::from_secs(5), put)
        .await
        .expect("the write waited for the slow replica")
        .unwrap();
    let mut stored = written.stored_on.clone();
    stored.sort();
    assert_eq!(stored, vec![node(2), node(3), node(4)]);
    // The slow replica was sent the write but has not answered.
    until("the slow replica is sent the write", || {
        c.replicas[1].writes().len() == 1
    })
    .await;
    assert_eq!(c.replicas[1].holds("k"), None);
    // The failed replica gets a hint; the slow one does not.
    until("a hint for the failed replica", || {
        !hinted(&c.store).is_empty()
    })
    .await;
    assert_eq!(hinted(&c.store), vec![node(0).to_string()]);
    // Once it answers, the slow replica holds the write too.
    gate.close();
    until("the slow replica stores the write", || {
        c.replicas[1].holds("k") == Some(written.version)
    })
    .await;
    assert_eq!(hinted(&c.store), vec![node(0).to_string()]);
}

#[tokio::test]
async fn a_write_two_of_three_replicas_fail_is_unavailable_naming_who_answered() {
    let c = cluster(3, 3, 3);
    c.replicas[0].set_faults(failing());
    c.replicas[1].set_faults(failing());
    let err = c
        .coordinator
        .put_bytes(
            "k",
            Bytes::from_static(b"v"),
            Expiry::Never,
            Quorum::Majority,
        )
        .await
        .unwrap_err();
    let Error::Unavailable {
        needed,
        got,
        answered,
        mut failed,
    } = err
    else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert_eq!((needed, got), (2, 1));
    assert_eq!(answered, vec![node(2)]);
    failed.sort();
    let failed: Vec<NodeId> = failed.into_iter().map(|(n, _)| n).collect();
    assert_eq!(failed, vec![node(0), node(1)]);
    assert_eq!(
        Error::Unavailable {
            needed,
            got,
            answered,
            failed: Vec::new()
        }
        .http_status(),
        503
    );
}

#[tokio::test]
async fn a_write_refused_by_full_disks_alone_is_507() {
    let c = cluster(3, 3, 3);
    for replica in &c.replicas[..2] {
        replica.set_faults(Faults {
            fail: Some(full),
            ..Faults::default()
        });
    }
    let err = c
        .coordinator
        .put_bytes(
            "k",
            Bytes::from_static(b"v"),
            Expiry::Never,
            Quorum::Majority,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DiskFull), "{err:?}");
}

#[tokio::test]
async fn a_read_returns_the_newest_version_and_repairs_the_stale_replica() {
    let c = cluster(3, 3, 3);
    let (old, new) = (version_in(0), version_in(1));
    for replica in &c.replicas {
        replica
            .store()
            .write_whole(record("k", old, b"old"), Bytes::from_static(b"old"))
            .unwrap();
    }
    for replica in &c.replicas[..2] {
        replica
            .store()
            .write_whole(record("k", new, b"new"), Bytes::from_static(b"new"))
            .unwrap();
    }
    // The stale replica answers first; of the others only one is quick.
    let gate = Arc::new(Semaphore::new(0));
    c.replicas[1].set_faults(held(&gate));
    let read = c.coordinator.get("k", Quorum::Majority).await.unwrap();
    assert_eq!(read.meta.version(), new);
    assert_eq!(read.value.as_deref(), Some(&b"new"[..]));
    assert_eq!(read.sources, vec![node(0)]);
    // Read repair waits for the slower replicas' answers first.
    gate.close();
    until("read repair of the stale replica", || {
        c.replicas[2].holds("k") == Some(new)
    })
    .await;
    // The repair came as an unfenced whole write of the newest record;
    // the replicas that held it were sent nothing.
    let repairs = c.replicas[2].writes();
    assert_eq!(repairs.len(), 1);
    assert_eq!(repairs[0].version(), new);
    assert!(matches!(
        c.replicas[2].calls().last(),
        Some(Call::Write { fenced: false, .. })
    ));
    assert!(c.replicas[0].writes().is_empty());
    assert!(c.replicas[1].writes().is_empty());
}

/// Writes `k` = `v` to every replica.
async fn put_everywhere(c: &Cluster) {
    c.coordinator
        .put_bytes("k", Bytes::from_static(b"v"), Expiry::Never, Quorum::All)
        .await
        .unwrap();
}

/// The reads each replica was sent: (replica, with its value).
fn reads(c: &Cluster) -> Vec<(usize, bool)> {
    let mut reads = Vec::new();
    for (i, replica) in c.replicas.iter().enumerate() {
        for call in replica.calls() {
            if let Call::Read { with_value, .. } = call {
                reads.push((i, with_value));
            }
        }
    }
    reads
}

/// The key's replicas in preference order, as indexes into `c.replicas`.
fn preference(c: &Cluster, key: &str) -> Vec<usize> {
    c.membership
        .ring()
        .nodes_of(key.as_bytes())
        .iter()
        .map(|n| (0..c.replicas.len()).find(|i| node(*i) == *n).unwrap())
        .collect()
}

#[tokio::test]
async fn a_read_asks_r_replicas_one_for_the_value_and_the_other_for_its_record() {
    let c = cluster(3, 3, 3);
    put_everywhere(&c).await;
    let read = c.coordinator.get("k", Quorum::Majority).await.unwrap();
    assert_eq!(read.value.as_deref(), Some(&b"v"[..]));
    let order = preference(&c, "k");
    let mut sent = reads(&c);
    sent.sort();
    let mut expected = vec![(order[0], true), (order[1], false)];
    expected.sort();
    assert_eq!(sent, expected);
    // With R = N every replica is asked, still one for the value.
    c.coordinator.get("k", Quorum::All).await.unwrap();
    assert_eq!(reads(&c).iter().filter(|(_, v)| *v).count(), 2);
    assert_eq!(reads(&c).len(), 5);
}

#[tokio::test]
async fn a_read_whose_value_sender_is_stale_fetches_the_value_from_a_replica_holding_the_newest() {
    let c = cluster(3, 3, 3);
    let order = preference(&c, "k");
    let (old, new) = (version_in(0), version_in(1));
    for (rank, i) in order.iter().enumerate() {
        let (version, value) = if rank == 0 {
            (old, "old")
        } else {
            (new, "new")
        };
        c.replicas[*i]
            .store()
            .write_whole(record("k", version, value.as_bytes()), Bytes::from(value))
            .unwrap();
    }
    let read = c.coordinator.get("k", Quorum::Majority).await.unwrap();
    assert_eq!(read.meta.version(), new);
    assert_eq!(read.value.as_deref(), Some(&b"new"[..]));
    assert_eq!(read.sources, vec![node(order[1])]);
    // The second replica was asked for the record, then for the value.
    let second: Vec<bool> = reads(&c)
        .into_iter()
        .filter(|(i, _)| *i == order[1])
        .map(|(_, v)| v)
        .collect();
    assert_eq!(second, vec![false, true]);
    until("read repair of the stale replica", || {
        c.replicas[order[0]].holds("k") == Some(new)
    })
    .await;
}

#[tokio::test]
async fn a_value_fetched_after_the_quorum_may_be_newer_never_gone() {
    let c = cluster(3, 3, 3);
    let order = preference(&c, "k");
    let (quorum, newer) = (version_in(0), version_in(1));
    // The quorum saw `quorum` on the source; a write replaced it since.
    c.replicas[order[1]]
        .store()
        .write_whole(record("k", newer, b"newer"), Bytes::from_static(b"newer"))
        .unwrap();
    let seen = record("k", quorum, b"seen");
    let (held, value, from) = c
        .coordinator
        .fetch_inline(&seen, &[node(order[1])])
        .await
        .expect("the newer record");
    assert_eq!(held.version(), newer);
    assert_eq!(value.as_deref(), Some(&b"newer"[..]));
    assert_eq!(from, node(order[1]));
    // A source holding only an older record gives nothing.
    c.replicas[order[2]]
        .store()
        .write_whole(record("k", quorum, b"seen"), Bytes::from_static(b"seen"))
        .unwrap();
    let later = record("k", version_in(2), b"later");
    assert!(
        c.coordinator
            .fetch_inline(&later, &[node(order[2])])
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_read_whose_first_replicas_are_slow_asks_the_others_after_the_hedge_delay() {
    let c = cluster(3, 3, 3);
    put_everywhere(&c).await;
    let order = preference(&c, "k");
    // The replica asked for the record never answers while the gate is open.
    let gate = Arc::new(Semaphore::new(0));
    c.replicas[order[1]].set_faults(held(&gate));
    let read = c.coordinator.get("k", Quorum::Majority).await.unwrap();
    assert_eq!(read.value.as_deref(), Some(&b"v"[..]));
    assert!(reads(&c).contains(&(order[2], true)), "{:?}", reads(&c));
    gate.close();
    // A failed replica is worked around at once: no hedge delay to wait.
    c.replicas[order[1]].set_faults(failing());
    let read = c.coordinator.get("k", Quorum::Majority).await.unwrap();
    assert_eq!(read.value.as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn one_read_in_every_full_read_every_asks_all_replicas_and_repairs_one_a_quorum_leaves_out() {
    let c = cluster_with(3, 3, 3, 2);
    let order = preference(&c, "k");
    let (old, new) = (version_in(0), version_in(1));
    for (rank, i) in order.iter().enumerate() {
        let version = if rank == 2 { old } else { new };
        c.replicas[*i]
            .store()
            .write_whole(record("k", version, b"v"), Bytes::from_static(b"v"))
            .unwrap();
    }
    // The first read is a full one: the third replica is read too (after
    // the quorum, by read repair) and repaired.
    c.coordinator.get("k", Quorum::Majority).await.unwrap();
    until("read repair of the replica left out of the quorum", || {
        c.replicas[order[2]].holds("k") == Some(new)
    })
    .await;
    assert_eq!(reads(&c).len(), 3);
    // The next asks R.
    c.coordinator.get("k", Quorum::Majority).await.unwrap();
    assert_eq!(reads(&c).len(), 5);
}

#[tokio::test]
async fn a_read_meets_its_quorum_with_one_replica_down_and_not_with_two() {
    let c = cluster(3, 3, 3);
    put_everywhere(&c).await;
    c.replicas[0].set_faults(failing());
    let read = c.coordinator.get("k", Quorum::Majority).await.unwrap();
    assert_eq!(read.value.as_deref(), Some(&b"v"[..]));
    assert!(!read.sources.contains(&node(0)), "{:?}", read.sources);
    c.replicas[1].set_faults(failing());
    let err = c.coordinator.get("k", Quorum::Majority).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable { needed: 2, got: 1, answered, .. } if *answered == vec![node(2)]),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_tombstone_reads_as_not_found_and_is_repaired_onto_an_older_value() {
    let c = cluster(3, 3, 3);
    let (old, new) = (version_in(0), version_in(1));
    c.replicas[0]
        .store()
        .write_whole(record("k", old, b"v"), Bytes::from_static(b"v"))
        .unwrap();
    for replica in &c.replicas[1..] {
        replica
            .store()
            .write_whole(tombstone("k", new), Bytes::new())
            .unwrap();
    }
    let err = c.coordinator.get("k", Quorum::All).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    until("the tombstone reaches the old value", || {
        c.replicas[0].holds("k") == Some(new)
    })
    .await;
    // A delete through the coordinator reads as absent too.
    c.coordinator.delete("j", Quorum::Majority).await.unwrap();
    let err = c.coordinator.get("j", Quorum::Majority).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// A key the fourth member takes over from the first three.
fn moved_key(before: &Ring, after: &Ring) -> String {
    (0..10_000)
        .map(|k| format!("key{k}"))
        .find(|k| {
            replica_set_hash(&before.nodes_of(k.as_bytes()))
                != replica_set_hash(&after.nodes_of(k.as_bytes()))
        })
        .expect("a moved key")
}

/// The coordinator's ring has three members, the replicas' four: the
/// replicas refuse on the fence, the coordinator learns their view and
/// plans again.
fn moved_cluster() -> (Cluster, String, Vec<NodeId>) {
    let c = cluster(4, 3, 3);
    let theirs = Arc::new(FixedMembership::new(peers(4), 3));
    for replica in &c.replicas {
        replica.set_faults(Faults {
            ring: Some(theirs.clone()),
            ..Faults::default()
        });
    }
    let key = moved_key(&c.membership.ring(), &theirs.ring());
    let now = theirs.ring().nodes_of(key.as_bytes());
    (c, key, now)
}

#[tokio::test]
async fn a_write_refused_on_the_ring_fence_is_planned_again_on_the_ring_learned() {
    let (c, key, now) = moved_cluster();
    assert!(now.contains(&node(3)));
    let written = c
        .coordinator
        .put_bytes(
            &key,
            Bytes::from_static(b"v"),
            Expiry::Never,
            Quorum::Majority,
        )
        .await
        .unwrap();
    // The coordinator learned the fourth member and wrote where it is.
    assert_eq!(c.membership.learned().len(), 1);
    assert_eq!(c.coordinator.ring().members().count(), 4);
    assert_eq!(written.replicas, now);
    until("every replica stores the write", || {
        c.replicas
            .iter()
            .all(|r| r.holds(&key) == Some(written.version))
    })
    .await;
    // Each old replica was asked twice (refused, then taken), the new one once.
    for replica in &c.replicas[..3] {
        assert_eq!(replica.writes().len(), 2, "{}", replica.node());
    }
    assert_eq!(c.replicas[3].writes().len(), 1);
    // No hint for a refusal: the write went where the new ring says.
    assert!(hinted(&c.store).is_empty());
}

#[tokio::test]
async fn a_read_refused_on_the_ring_fence_reads_again_where_the_ring_learned_says() {
    let (c, key, now) = moved_cluster();
    let version = version_in(0);
    for i in &now {
        let replica = c.replicas.iter().find(|r| r.node() == i).unwrap();
        replica
            .store()
            .write_whole(record(&key, version, b"v"), Bytes::from_static(b"v"))
            .unwrap();
    }
    let read = c.coordinator.get(&key, Quorum::Majority).await.unwrap();
    assert_eq!(read.meta.version(), version);
    assert_eq!(c.membership.learned().len(), 1);
    assert!(read.sources.iter().all(|n| now.contains(n)));
}
