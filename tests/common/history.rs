//! A consistency checker in the manner of Jepsen: concurrent clients, each
//! owning its keys, overwrite, delete and read them through random
//! coordinators while a test injects faults; every operation is recorded
//! with its outcome (acknowledged, failed, or unknown after a timeout).
//!
//! Because a client owns its keys and waits for each request, the
//! operations on one key are totally ordered. What a read may return is
//! then exact: the effect of the last acknowledged write or delete before
//! it, or of any later one that was not acknowledged (a failed or timed-out
//! request may still have reached some replicas). Anything older is a stale
//! read during the run, or, in the final check, a lost write or a deleted
//! key come back.
//!
//! Some workloads also write values with a time to live (F28). A value read
//! after its expiry has surely passed (the read began more than the TTL
//! after its write was acknowledged) is a violation like a stale read;
//! one read while it may or may not have expired may be either.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

/// What a write or delete left: a value, or nothing.
pub type Effect = Option<u64>;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node said it was done.
    Acknowledged,
    /// The node said it failed, or could not be reached: it may still have
    /// reached some replicas.
    Failed,
    /// No answer in time: it may or may not have happened.
    Unknown,
}

/// One write or delete of a key, in the order its client issued them.
#[derive(Debug, Clone)]
pub struct Change {
    /// The value written, `None` for a delete.
    pub effect: Effect,
    /// How it ended.
    pub outcome: Outcome,
    /// For a value written with a time to live, when it was sent and
    /// answered and the TTL: it expires somewhere in between plus the TTL.
    pub expiry: Option<Lifetime>,
}

/// The life of a value written with a TTL, as its client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// When the write was sent.
    pub sent: Instant,
    /// When it was answered (or given up on).
    pub answered: Instant,
    /// Its time to live.
    pub ttl: Duration,
}

/// Allowance for the clocks of client and nodes and for rounding to ms.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);

impl Lifetime {
    /// Expired for sure at `at`.
    fn surely_expired(&self, at: Instant) -> bool {
        at > self.answered + self.ttl + EXPIRY_SLACK
    }

    /// Maybe expired at `at`.
    fn maybe_expired(&self, at: Instant) -> bool {
        at + EXPIRY_SLACK >= self.sent + self.ttl
    }
}

/// Figures of a run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Writes and deletes acknowledged, failed, unknown.
    pub changes: [u64; 3],
    /// Reads answered, failed or unknown.
    pub reads: [u64; 3],
    /// Reads that returned something older than allowed, described.
    pub stale: Vec<String>,
}

/// Per key, its writes and deletes in order.
pub type Changes = BTreeMap<String, Vec<Change>>;

/// What every key went through.
#[derive(Debug, Default)]
pub struct History {
    /// Per key, its writes and deletes in order.
    pub keys: Changes,
    /// Figures.
    pub tally: Tally,
}

/// What `changes` allow a read to return: the effect of the last
/// acknowledged change and of every change after it.
pub fn allowed(changes: &[Change]) -> Vec<Effect> {
    let last_ack = changes
        .iter()
        .rposition(|c| c.outcome == Outcome::Acknowledged);
    let mut allowed: Vec<Effect> = match last_ack {
        Some(i) => changes[i..].iter().map(|c| c.effect).collect(),
        // Nothing acknowledged: absent, or any attempt.
        None => std::iter::once(None)
            .chain(changes.iter().map(|c| c.effect))
            .collect(),
    };
    allowed.dedup();
    allowed
}

/// What `changes` allow a read sent at `sent` and answered at `answered` to
/// return, expiry included: a value surely expired by `sent` reads as
/// absent, one maybe expired meanwhile as either.
pub fn allowed_at(changes: &[Change], sent: Instant, answered: Instant) -> Vec<Effect> {
    let last_ack = changes
        .iter()
        .rposition(|c| c.outcome == Outcome::Acknowledged);
    let mut allowed: Vec<Effect> = Vec::new();
    if last_ack.is_none() {
        allowed.push(None);
    }
    for change in &changes[last_ack.unwrap_or(0)..] {
        match (change.effect, change.expiry) {
            (Some(_), Some(life)) if life.surely_expired(sent) => allowed.push(None),
            (Some(value), Some(life)) if life.maybe_expired(answered) => {
                allowed.push(Some(value));
                allowed.push(None);
            }
            (effect, _) => allowed.push(effect),
        }
    }
    allowed.sort();
    allowed.dedup();
    allowed
}

/// Running clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<String>>>,
    acknowledged: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(Changes, Tally)>>,
}

/// Outcome index in a tally's arrays.
fn slot(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Acknowledged => 0,
        Outcome::Failed => 1,
        Outcome::Unknown => 2,
    }
}

impl Workload {
    /// Starts `clients` clients, each owning `keys` keys named
    /// `{prefix}{client}-{i}`, sending requests through `urls` chosen at
    /// random (client `c` draws from `seed + c`); a request unanswered
    /// after `timeout` is unknown.
    pub fn start(
        urls: Vec<String>,
        prefix: &str,
        clients: usize,
        keys: usize,
        timeout: Duration,
        seed: u64,
    ) -> Workload {
        Workload::start_expiring(urls, prefix, clients, keys, timeout, seed, None)
    }

    /// [`Workload::start`], where with `ttl` half the writes give their
    /// value a time to live drawn from `ttl`'s range (`?ttl=…ms`).
    pub fn start_expiring(
        urls: Vec<String>,
        prefix: &str,
        clients: usize,
        keys: usize,
        timeout: Duration,
        seed: u64,
        ttl: Option<(Duration, Duration)>,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(urls));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|client| {
                let names: Vec<String> =
                    (0..keys).map(|i| format!("{prefix}{client}-{i}")).collect();
                tokio::spawn(run_client(
                    client as u64,
                    StdRng::seed_from_u64(seed.wrapping_add(client as u64)),
                    names,
                    timeout,
                    stop.clone(),
                    targets.clone(),
                    acknowledged.clone(),
                    ttl,
                ))
            })
            .collect();
        Workload {
            stop,
            targets,
            acknowledged,
            tasks,
        }
    }

    /// Changes the nodes requests go through.
    pub fn set_targets(&self, urls: Vec<String>) {
        *self.targets.lock().unwrap() = urls;
    }

    /// Writes and deletes acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// Stops every client and returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Release);
        let mut history = History::default();
        for task in self.tasks {
            let (keys, tally) = task.await.expect("client task");
            history.keys.extend(keys);
            for i in 0..3 {
                history.tally.changes[i] += tally.changes[i];
                history.tally.reads[i] += tally.reads[i];
            }
            history.tally.stale.extend(tally.stale);
        }
        history
    }
}

/// How a request went: its outcome and, for reads, what it returned.
async fn send(request: reqwest::RequestBuilder) -> (Outcome, Option<(StatusCode, String)>) {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            match response.text().await {
                Ok(body) => (Outcome::Acknowledged, Some((status, body))),
                Err(err) if err.is_timeout() => (Outcome::Unknown, None),
                Err(_) => (Outcome::Failed, None),
            }
        }
        Err(err) if err.is_timeout() => (Outcome::Unknown, None),
        Err(_) => (Outcome::Failed, None),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    client: u64,
    mut rng: StdRng,
    names: Vec<String>,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<String>>>,
    acknowledged: Arc<AtomicU64>,
    ttl: Option<(Duration, Duration)>,
) -> (Changes, Tally) {
    let http = ringkv::tls::http_client_builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .expect("client");
    let mut keys: Changes = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut tally = Tally::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        let (node, name, dice) = {
            let nodes = targets.lock().unwrap().clone();
            let node = nodes[rng.random_range(0..nodes.len())].clone();
            (
                node,
                names[rng.random_range(0..names.len())].clone(),
                rng.random_range(0..100u32),
            )
        };
        let url = format!("{node}/keys/{name}");
        if dice < 50 {
            // An overwrite with a value unique to this client and step.
            seq += 1;
            let value = client * 1_000_000_000 + seq;
            let life = ttl.filter(|_| rng.random_bool(0.5)).map(|(low, high)| {
                Duration::from_millis(
                    rng.random_range(low.as_millis() as u64..=high.as_millis() as u64),
                )
            });
            let url = match life {
                Some(ttl) => format!("{url}?ttl={}ms", ttl.as_millis()),
                None => url,
            };
            let sent = Instant::now();
            let (outcome, reply) = send(http.put(&url).body(value.to_string())).await;
            let outcome = match (outcome, reply) {
                (Outcome::Acknowledged, Some((StatusCode::CREATED, _))) => Outcome::Acknowledged,
                (Outcome::Unknown, _) => Outcome::Unknown,
                _ => Outcome::Failed,
            };
            let expiry = life.map(|ttl| Lifetime {
                sent,
                answered: Instant::now(),
                ttl,
            });
            record(
                &mut keys,
                &mut tally,
                &acknowledged,
                &name,
                (Some(value), expiry),
                outcome,
            );
        } else if dice < 60 {
            let (outcome, reply) = send(http.delete(&url)).await;
            let outcome = match (outcome, reply) {
                (Outcome::Acknowledged, Some((StatusCode::OK, _))) => Outcome::Acknowledged,
                (Outcome::Unknown, _) => Outcome::Unknown,
                _ => Outcome::Failed,
            };
            record(
                &mut keys,
                &mut tally,
                &acknowledged,
                &name,
                (None, None),
                outcome,
            );
        } else {
            let sent = Instant::now();
            let (outcome, reply) = send(http.get(&url)).await;
            let answered = Instant::now();
            let read = match (outcome, reply) {
                (Outcome::Acknowledged, Some((StatusCode::OK, body))) => {
                    Some(body.parse::<u64>().ok())
                }
                (Outcome::Acknowledged, Some((StatusCode::NOT_FOUND, _))) => Some(None),
                (Outcome::Unknown, _) => {
                    tally.reads[2] += 1;
                    continue;
                }
                _ => None,
            };
            let Some(got) = read else {
                tally.reads[1] += 1;
                continue;
            };
            tally.reads[0] += 1;
            let changes = &keys[&name];
            let allowed = allowed_at(changes, sent, answered);
            if !allowed.contains(&got) {
                tally.stale.push(format!(
                    "GET {url} returned {got:?}; allowed {allowed:?} after {changes:?}"
                ));
            }
        }
    }
    (keys, tally)
}

fn record(
    keys: &mut Changes,
    tally: &mut Tally,
    acknowledged: &AtomicU64,
    name: &str,
    (effect, expiry): (Effect, Option<Lifetime>),
    outcome: Outcome,
) {
    tally.changes[slot(outcome)] += 1;
    if outcome == Outcome::Acknowledged {
        acknowledged.fetch_add(1, Ordering::Release);
    }
    if let Some(changes) = keys.get_mut(name) {
        changes.push(Change {
            effect,
            outcome,
            expiry,
        });
    }
}

/// What a final read of every key through every node found wrong.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Keys read, per node.
    pub reads: u64,
    /// Acknowledged writes lost, deleted or expired keys come back,
    /// described.
    pub violations: Vec<String>,
    /// Keys whose replicas hold different versions, described.
    pub disagreements: Vec<String>,
}

/// Reads every key of `history` through every node at `urls`, and asks
/// each of its replicas what it holds.
pub async fn verify(http: &reqwest::Client, urls: &[String], history: &History) -> Verdict {
    let mut verdict = Verdict::default();
    for (key, changes) in &history.keys {
        for url in urls {
            let sent = Instant::now();
            let response = http
                .get(format!("{url}/keys/{key}"))
                .send()
                .await
                .expect("final read");
            let got = match response.status() {
                StatusCode::OK => response.text().await.ok().and_then(|b| b.parse().ok()),
                StatusCode::NOT_FOUND => None,
                status => panic!("final read of {key} through {url}: {status}"),
            };
            verdict.reads += 1;
            let allowed = allowed_at(changes, sent, Instant::now());
            if !allowed.contains(&got) {
                let last_ack = changes
                    .iter()
                    .rev()
                    .find(|c| c.outcome == Outcome::Acknowledged);
                let what = match (got, last_ack) {
                    (Some(_), Some(c)) if c.effect.is_none() => "a deleted key came back",
                    (Some(_), Some(c)) if c.expiry.is_some() => "an expired value came back",
                    _ => "an acknowledged write was lost",
                };
                verdict.violations.push(format!(
                    "{what}: {key} through {url} is {got:?}; allowed {allowed:?} after {changes:?}"
                ));
            }
        }
        let replicas: Vec<String> = http
            .get(format!("{}/whereis/{key}", urls[0]))
            .send()
            .await
            .expect("whereis")
            .json()
            .await
            .expect("whereis json");
        let mut held = Vec::new();
        for node in &replicas {
            let has: serde_json::Value = http
                .get(format!("http://{node}/haskey/{key}"))
                .send()
                .await
                .expect("haskey")
                .json()
                .await
                .expect("haskey json");
            held.push((has["timestamp"].as_u64(), has["deleted"].as_bool()));
        }
        if held.windows(2).any(|w| w[0] != w[1]) {
            verdict
                .disagreements
                .push(format!("{key}: {replicas:?} hold {held:?}"));
        }
    }
    verdict
}

/// A line of figures: operations by outcome, stale reads, violations.
pub fn summary(history: &History, verdict: &Verdict) -> String {
    let t = &history.tally;
    format!(
        "changes ok/failed/unknown {}/{}/{}, reads {}/{}/{}, stale reads {}, final reads {}, violations {}, disagreements {}",
        t.changes[0],
        t.changes[1],
        t.changes[2],
        t.reads[0],
        t.reads[1],
        t.reads[2],
        t.stale.len(),
        verdict.reads,
        verdict.violations.len(),
        verdict.disagreements.len()
    )
}

/// Prints `label: figures` and panics with the details unless the run was
/// clean.
pub fn assert_consistent(label: &str, history: &History, verdict: &Verdict) {
    let line = summary(history, verdict);
    eprintln!("{label}: {line}");
    assert!(
        history.tally.changes[0] > 0 && history.tally.reads[0] > 0,
        "the clients did nothing: {line}"
    );
    assert!(
        history.tally.stale.is_empty(),
        "{line}\nstale reads: {:#?}",
        history.tally.stale
    );
    assert!(
        verdict.violations.is_empty(),
        "{line}\nviolations: {:#?}",
        verdict.violations
    );
    assert!(
        verdict.disagreements.is_empty(),
        "{line}\nreplicas disagree: {:#?}",
        verdict.disagreements
    );
}
