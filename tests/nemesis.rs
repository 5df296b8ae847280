//! The fault matrix: five nodes with N = 3 and the default
//! quorums, each node in its own network namespace, links between them cut
//! by blackhole routes while the clients (this process) still reach every
//! node. Concurrent clients write, delete and read through random nodes on
//! both sides of every cut; after the faults heal and a balance, every key
//! is read through every node and its replicas compared (tests/common/
//! history.rs). Needs root.

mod common;

use std::time::Duration;

use common::history::{self, Change, Outcome, Workload, allowed};
use common::{Cluster, DEADLINE, Options, wait_for};

/// Nodes in each scenario.
const NODES: usize = 5;

/// The clients' random seed: `RINGKV_NEMESIS_SEED`, else a fresh one
/// (printed with each scenario's figures, to run it again).
fn seed() -> u64 {
    std::env::var("RINGKV_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// How long each fault lasts at least: `RINGKV_NEMESIS_SECONDS` (long
/// runs, `bench/nemesis.sh`); by default as long as the clients take to
/// get their writes through.
fn fault_length() -> Duration {
    let seconds = std::env::var("RINGKV_NEMESIS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Duration::from_secs(seconds)
}

/// Keeps a fault on until the clients had `count` more changes
/// acknowledged and [`fault_length`] has passed (the fault's length, not a
/// wait for a condition).
async fn hold_fault(workload: &Workload, count: u64) {
    let started = std::time::Instant::now();
    wait_progress(workload, count).await;
    tokio::time::sleep(fault_length().saturating_sub(started.elapsed())).await;
}

/// Node `observer`'s view of node `member`'s state.
async fn seen_state(cluster: &Cluster, observer: usize, member: usize) -> Option<String> {
    cluster
        .state_seen(observer, &cluster.nodes[member].id)
        .await
}

/// Waits until every node in `observers` sees every node in `members` in
/// `state`.
async fn wait_seen(cluster: &Cluster, observers: &[usize], members: &[usize], state: &str) {
    wait_for(
        &format!("{observers:?} to see {members:?} {state}"),
        DEADLINE,
        || async {
            for &o in observers {
                for &m in members {
                    if seen_state(cluster, o, m).await.as_deref() != Some(state) {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await;
}

/// Waits until the clients have had `count` more changes acknowledged.
async fn wait_progress(workload: &Workload, count: u64) {
    let from = workload.acknowledged();
    wait_for("acknowledged writes", DEADLINE, || async {
        (workload.acknowledged() >= from + count).then_some(())
    })
    .await;
}

/// Every node of the cluster as started.
fn everyone() -> Vec<usize> {
    (0..NODES).collect()
}

/// Starts a 5-node cluster in namespaces, runs clients through every node
/// while `nemesis` injects its faults and heals them, then balances and
/// checks through the nodes the nemesis says are members at the end.
async fn scenario(name: &str, nemesis: impl AsyncFnOnce(&mut Cluster, &Workload) -> Vec<usize>) {
    let mut cluster = Cluster::start(Options {
        nodes: NODES,
        netns: true,
        ..Options::default()
    })
    .await;
    let urls: Vec<String> = (0..NODES).map(|i| cluster.url(i)).collect();
    let seed = seed();
    let workload = Workload::start(urls.clone(), name, 4, 10, Duration::from_secs(5), seed);
    wait_progress(&workload, 50).await;

    let members = nemesis(&mut cluster, &workload).await;

    // Healed: every member sees every other normal; the clients go on a
    // little on the healed cluster.
    let urls: Vec<String> = members.iter().map(|&i| cluster.url(i)).collect();
    workload.set_targets(urls.clone());
    wait_seen(&cluster, &members, &members, "normal").await;
    wait_progress(&workload, 50).await;
    let history = workload.stop().await;
    // A failure detector that saw links flap can take a moment more to
    // trust a peer again: balance until every pair was compared.
    wait_for("a balance comparing every pair", DEADLINE, || async {
        let summary = cluster.balance(members[0]);
        (summary["failed"].as_array().map(Vec::len) == Some(0)).then_some(())
    })
    .await;
    let verdict = history::verify(&cluster.http, &urls, &history).await;
    history::assert_consistent(&format!("nemesis {name} seed {seed}"), &history, &verdict);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_its_peers_but_not_from_clients() {
    scenario("cut-off", async |cluster, workload| {
        let others = [0, 1, 2, 3];
        let net = cluster.net.as_mut().expect("namespaces");
        net.partition(&[4], &others);
        wait_seen(cluster, &[4], &others, "down").await;
        wait_seen(cluster, &others, &[4], "down").await;
        hold_fault(workload, 100).await;
        let net = cluster.net.as_mut().expect("namespaces");
        net.heal_partition(&[4], &others);
        everyone()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_majority_and_a_minority_with_clients_on_both_sides() {
    scenario("split", async |cluster, workload| {
        let (majority, minority) = ([0, 1, 2], [3, 4]);
        let net = cluster.net.as_mut().expect("namespaces");
        net.partition(&majority, &minority);
        wait_seen(cluster, &majority, &minority, "down").await;
        wait_seen(cluster, &minority, &majority, "down").await;
        hold_fault(workload, 100).await;
        let net = cluster.net.as_mut().expect("namespaces");
        net.heal_partition(&majority, &minority);
        everyone()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_partition_where_one_node_sees_both_sides() {
    scenario("bridge", async |cluster, workload| {
        // {0, 1} and {3, 4} only reach each other through node 2. Gossip
        // relayed by node 2 keeps both sides up in each other's eyes, so
        // requests across the cut are tried and time out.
        let net = cluster.net.as_mut().expect("namespaces");
        net.partition(&[0, 1], &[3, 4]);
        hold_fault(workload, 100).await;
        let net = cluster.net.as_mut().expect("namespaces");
        net.heal_partition(&[0, 1], &[3, 4]);
        everyone()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flapping_links() {
    scenario("flapping", async |cluster, workload| {
        // Each round cuts a different pair of links, then heals them,
        // without waiting for the failure detector; six rounds, or as many
        // as the fault's length takes.
        let started = std::time::Instant::now();
        for round in (0..).take_while(|&r| r < 6 || started.elapsed() < fault_length()) {
            let (a, b) = (round % NODES, (round + 2) % NODES);
            let (c, d) = ((round + 1) % NODES, (round + 4) % NODES);
            let net = cluster.net.as_mut().expect("namespaces");
            net.cut(a, b);
            net.cut(c, d);
            wait_progress(workload, 30).await;
            let net = cluster.net.as_mut().expect("namespaces");
            net.heal(a, b);
            net.heal(c, d);
            wait_progress(workload, 10).await;
        }
        everyone()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_and_restart_with_the_same_data() {
    scenario("crash", async |cluster, workload| {
        for victim in [1, 3] {
            cluster.kill(victim);
            let others: Vec<usize> = (0..NODES).filter(|&i| i != victim).collect();
            wait_seen(cluster, &others, &[victim], "down").await;
            hold_fault(workload, 100).await;
            cluster.restart(victim);
            wait_seen(cluster, &others, &[victim], "normal").await;
        }
        everyone()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_node_resumed() {
    scenario("pause", async |cluster, workload| {
        cluster.freeze(2);
        wait_seen(cluster, &[0, 1, 3, 4], &[2], "down").await;
        // A client that picks the paused node waits for its timeout: fewer
        // requests get through than in the other scenarios.
        hold_fault(workload, 30).await;
        cluster.thaw(2);
        everyone()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clocks_running_seconds_ahead_and_behind() {
    scenario("skew", async |cluster, workload| {
        // Node 3's clock runs 3 s behind, node 4's 3 s ahead; both restart
        // so, on their data.
        for (node, skew) in [(3, "-3000"), (4, "3000")] {
            cluster.kill(node);
            cluster.nodes[node]
                .flags
                .extend(["--clock-skew-ms".to_string(), skew.to_string()]);
            cluster.restart(node);
        }
        cluster.wait_converged().await;
        hold_fault(workload, 300).await;
        everyone()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_during_a_partition() {
    scenario("join", async |cluster, workload| {
        let (majority, minority) = ([0, 1, 2], [3, 4]);
        let net = cluster.net.as_mut().expect("namespaces");
        net.partition(&majority, &minority);
        wait_seen(cluster, &majority, &minority, "down").await;
        // A sixth node joins through node 0; it reaches every node.
        let seed = cluster.nodes[0].id.clone();
        let joiner = cluster.spawn(vec!["--replicas".into(), "3".into(), "--join".into(), seed]);
        wait_for("node 0 to see the joiner", DEADLINE, || async {
            let state = seen_state(cluster, 0, joiner).await?;
            (state == "joining" || state == "normal").then_some(())
        })
        .await;
        hold_fault(workload, 100).await;
        let net = cluster.net.as_mut().expect("namespaces");
        net.heal_partition(&majority, &minority);
        (0..=joiner).collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_leaves_during_a_partition() {
    scenario("leave", async |cluster, workload| {
        let (majority, minority) = ([0, 1, 2], [3, 4]);
        let net = cluster.net.as_mut().expect("namespaces");
        net.partition(&majority, &minority);
        wait_seen(cluster, &majority, &minority, "down").await;
        // Node 2 leaves (SIGTERM: hand its ranges over, then exit); some
        // of the nodes taking them are across the cut.
        let stays: Vec<usize> = vec![0, 1, 3, 4];
        workload.set_targets(stays.iter().map(|&i| cluster.url(i)).collect());
        cluster.signal(2, libc::SIGTERM);
        hold_fault(workload, 100).await;
        let net = cluster.net.as_mut().expect("namespaces");
        net.heal_partition(&majority, &minority);
        let code = tokio::task::block_in_place(|| cluster.wait_exit(2, Duration::from_secs(120)));
        assert_eq!(code, Some(0), "node 2 did not leave cleanly");
        stays
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_node_is_removed_during_a_partition() {
    scenario("remove", async |cluster, workload| {
        let live: Vec<usize> = vec![0, 1, 2, 3];
        workload.set_targets(live.iter().map(|&i| cluster.url(i)).collect());
        cluster.kill(4);
        wait_seen(cluster, &live, &[4], "down").await;
        let net = cluster.net.as_mut().expect("namespaces");
        net.partition(&[0, 1], &[2, 3]);
        wait_seen(cluster, &[0, 1], &[2, 3], "down").await;
        // Removed through node 0 while half the cluster is out of reach:
        // it may be refused (node 0 cannot re-replicate from there) with
        // 503 and a reason; then it is done once the partition heals.
        let remove = format!("{}/ring/{}?wait=5s", cluster.url(0), cluster.nodes[4].id);
        let during = cluster.http.delete(&remove).send().await.unwrap();
        let (status, body) = (during.status(), during.text().await.unwrap());
        eprintln!("remove during the partition: {status} {body}");
        assert!(status.is_success() || status == 503, "{status} {body}");
        hold_fault(workload, 100).await;
        let net = cluster.net.as_mut().expect("namespaces");
        net.heal_partition(&[0, 1], &[2, 3]);
        if !status.is_success() {
            wait_seen(cluster, &live, &live, "normal").await;
            let after = cluster.http.delete(&remove).send().await.unwrap();
            assert!(
                after.status().is_success(),
                "{}",
                after.text().await.unwrap()
            );
        }
        wait_seen(cluster, &live, &[4], "removed").await;
        live
    })
    .await;
}

/// Two nodes join a 3-node cluster while node 2's gossip is cut off (UDP
/// only: clients and the node-to-node RPC still reach it), clients
/// writing and reading through it more than through the others. The
/// others see node 2 down and go on without it; node 2 keeps its old ring,
/// in which the keys the joiners took are still on the old owners (and
/// those purge them). `fence`: ring-version fencing on (the default) or
/// off (the hidden `--no-ring-fence`).
async fn gossip_cut_during_joins(fence: bool) -> (String, history::History, history::Verdict) {
    let flags: Vec<String> = if fence {
        Vec::new()
    } else {
        vec!["--no-ring-fence".into()]
    };
    let mut cluster = Cluster::start(Options {
        nodes: 3,
        netns: true,
        flags: flags.clone(),
        ..Options::default()
    })
    .await;
    let seed = seed();
    let label = format!("gossip cut during joins, fencing {fence}, seed {seed}");
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let workload = Workload::start(urls, "gossip-cut", 4, 10, Duration::from_secs(5), seed);
    wait_progress(&workload, 50).await;
    // Node 2 hears no gossip from anyone, the joiners included.
    let net = cluster.net.as_mut().expect("namespaces");
    for other in [0, 1, 3, 4] {
        net.cut_udp(2, other);
    }
    wait_seen(&cluster, &[0, 1], &[2], "down").await;
    let seed_node = cluster.nodes[0].id.clone();
    let mut joiners = Vec::new();
    for _ in 0..2 {
        let mut join = flags.clone();
        join.extend(["--join".to_string(), seed_node.clone()]);
        joiners.push(cluster.spawn(join));
    }
    let moved_on = [0, 1, joiners[0], joiners[1]];
    let joined =
        tokio::time::timeout(DEADLINE, wait_seen(&cluster, &moved_on, &joiners, "normal")).await;
    if joined.is_err() {
        for &j in &joiners {
            eprintln!(
                "node {j} ring: {:#}",
                cluster.ring(j).await.unwrap_or_default()
            );
            eprintln!("node {j} log:\n{}", cluster.log_tail(j));
        }
        panic!("the joiners did not turn normal");
    }
    // Clients go through node 2 half the time.
    let target = |i: usize| cluster.url(i);
    workload.set_targets(vec![
        target(2),
        target(2),
        target(2),
        target(0),
        target(1),
        target(joiners[0]),
    ]);
    hold_fault(&workload, 200).await;
    let net = cluster.net.as_mut().expect("namespaces");
    for other in [0, 1, 3, 4] {
        net.heal_udp(2, other);
    }
    let everyone: Vec<usize> = (0..5).collect();
    workload.set_targets(everyone.iter().map(|&i| cluster.url(i)).collect());
    wait_seen(&cluster, &everyone, &everyone, "normal").await;
    wait_progress(&workload, 50).await;
    let history = workload.stop().await;
    wait_for("a balance comparing every pair", DEADLINE, || async {
        let summary = cluster.balance(0);
        (summary["failed"].as_array().map(Vec::len) == Some(0)).then_some(())
    })
    .await;
    let urls: Vec<String> = everyone.iter().map(|&i| cluster.url(i)).collect();
    let verdict = history::verify(&cluster.http, &urls, &history).await;
    (label, history, verdict)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_gossip_is_cut_plans_nothing_on_its_old_ring() {
    let (label, history, verdict) = gossip_cut_during_joins(true).await;
    history::assert_consistent(&label, &history, &verdict);
}

/// What fencing prevents: the same run with it off goes wrong.
#[tokio::test(flavor = "multi_thread")]
async fn without_ring_fencing_a_node_whose_gossip_is_cut_serves_stale_reads() {
    let (label, history, verdict) = gossip_cut_during_joins(false).await;
    let line = history::summary(&history, &verdict);
    eprintln!("{label}: {line}");
    assert!(
        !history.tally.stale.is_empty() || !verdict.violations.is_empty(),
        "with fencing off the checker found nothing: {line}"
    );
}

/// A tmpfs of `mib` MiB mounted at `dir`, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, mib: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (the fault tests need root)");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }

    /// Bytes free.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct.
        unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0);
            stat.f_bavail * stat.f_frsize
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_507_and_recovers_when_space_returns() {
    let mut cluster = Cluster::start(Options {
        nodes: NODES,
        netns: true,
        ..Options::default()
    })
    .await;
    // Node 4 moves to a small disk of its own, with its data.
    cluster.kill(4);
    let small = cluster.dir.path().join("small");
    let disk = SmallDisk::mount(&small, 64);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", cluster.nodes[4].data_dir.display()))
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success());
    cluster.nodes[4].data_dir = small.clone();
    cluster.nodes[4]
        .flags
        .extend(["--disk-reserve".to_string(), "16MiB".to_string()]);
    cluster.restart(4);
    cluster.wait_converged().await;

    let urls: Vec<String> = (0..NODES).map(|i| cluster.url(i)).collect();
    let seed = seed();
    let workload = Workload::start(urls.clone(), "disk-", 4, 10, Duration::from_secs(5), seed);
    wait_progress(&workload, 50).await;

    // Fill the disk but for 8 MiB, half the reserve.
    let filler = small.join("filler");
    let room = disk.free().saturating_sub(8 * 1024 * 1024);
    std::fs::write(&filler, vec![0u8; room as usize]).unwrap();
    // Writes that need node 4 (w=all, of a key it holds) get 507 once it
    // cannot take them; the node stays up.
    let http = cluster.http.clone();
    let mut key = String::new();
    for i in 0.. {
        key = format!("too-big-{i}");
        let replicas: Vec<String> =
            common::get_json(&http, &format!("{}/whereis/{key}", cluster.url(0))).await;
        if replicas.contains(&cluster.nodes[4].id) {
            break;
        }
    }
    let value = vec![7u8; 512 * 1024];
    let url = format!("{}?w=all", common::key_url(&cluster, 4, &key));
    let put_answers = |status: u16| {
        let (http, url, value) = (&http, &url, &value);
        async move {
            let response = http.put(url).body(value.clone()).send().await.ok()?;
            (response.status() == status).then_some(())
        }
    };
    wait_for("a 507 from the full node", DEADLINE, || put_answers(507)).await;
    let health = http
        .get(format!("{}/health", cluster.url(4)))
        .send()
        .await
        .unwrap();
    // Not ready while its disk is full, and saying why.
    assert_eq!(health.status(), 503);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["checks"]["storage"]["disk_full"], true, "{health}");
    wait_progress(&workload, 50).await;

    // Space returns: the same write succeeds.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the node to take writes again", DEADLINE, || {
        put_answers(201)
    })
    .await;
    wait_progress(&workload, 50).await;
    let history = workload.stop().await;
    let summary = cluster.balance(0);
    assert_eq!(
        summary["failed"].as_array().map(Vec::len),
        Some(0),
        "{summary}"
    );
    let verdict = history::verify(&cluster.http, &urls, &history).await;
    history::assert_consistent(
        &format!("nemesis disk-full seed {seed}"),
        &history,
        &verdict,
    );
    // The disk is unmounted (lazily) before the cluster goes, in reverse
    // order of creation.
}

#[test]
fn what_a_read_may_return() {
    use Outcome::*;
    let change = |effect, outcome| Change {
        effect,
        outcome,
        expiry: None,
    };
    assert_eq!(allowed(&[]), vec![None]);
    assert_eq!(
        allowed(&[change(Some(1), Acknowledged), change(Some(2), Acknowledged)]),
        vec![Some(2)]
    );
    // A later failed or unknown write may or may not have happened.
    assert_eq!(
        allowed(&[
            change(Some(1), Acknowledged),
            change(None, Acknowledged),
            change(Some(3), Failed),
            change(Some(4), Unknown),
        ]),
        vec![None, Some(3), Some(4)]
    );
    assert_eq!(allowed(&[change(Some(1), Failed)]), vec![None, Some(1)]);
}
