//! A concurrent client that writes and reads its own keys for the whole of
//! a test and reports every failed request and every read that returned an
//! older value than one it had been told was written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;

/// What the checker saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Writes acknowledged.
    pub writes: u64,
    /// Reads answered.
    pub reads: u64,
    /// Requests that failed (status or transport error), described.
    pub failed: Vec<String>,
    /// Reads older than an acknowledged write, described.
    pub violations: Vec<String>,
    /// Each key and the newest value acknowledged for it.
    pub acked: Vec<(String, u64)>,
}

/// The running checker.
pub struct Checker {
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<Report>,
}

impl Checker {
    /// Starts writing and reading `keys` keys named `{prefix}{i}` through
    /// the nodes at `urls` (base URLs), in turn.
    pub fn start(urls: Vec<String>, prefix: &str, keys: usize) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(urls));
        let task = tokio::spawn(run(stop.clone(), targets.clone(), prefix.to_string(), keys));
        Checker {
            stop,
            targets,
            task,
        }
    }

    /// Changes the nodes requests go through (e.g. before stopping one).
    pub fn set_targets(&self, urls: Vec<String>) {
        *self.targets.lock().unwrap() = urls;
    }

    /// Stops and reports.
    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("checker task")
    }
}

/// Panics with the report unless nothing failed and nothing was stale.
pub fn assert_clean(report: &Report) {
    assert!(
        report.writes > 0 && report.reads > 0,
        "the checker did nothing: {report:?}"
    );
    assert!(
        report.violations.is_empty(),
        "stale reads: {:?}",
        report.violations
    );
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        report.failed
    );
}

async fn run(
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<String>>>,
    prefix: String,
    keys: usize,
) -> Report {
    let http = ringkv::tls::http_client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut acked = vec![0u64; keys];
    let mut report = Report::default();
    let mut counter = 0u64;
    while !stop.load(Ordering::Acquire) {
        counter += 1;
        let nodes = targets.lock().unwrap().clone();
        let write_node = &nodes[counter as usize % nodes.len()];
        let read_node = &nodes[(counter as usize + 1) % nodes.len()];
        let i = counter as usize % keys;
        let key = format!("{prefix}{i}");
        let url = format!("{write_node}/keys/{key}");
        match http.put(&url).body(counter.to_string()).send().await {
            Ok(r) if r.status() == StatusCode::CREATED => {
                acked[i] = counter;
                report.writes += 1;
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                report.failed.push(format!("PUT {url}: {status} {body}"));
            }
            Err(err) => report.failed.push(format!("PUT {url}: {err}")),
        }
        let j = (i + keys / 2) % keys;
        let key = format!("{prefix}{j}");
        let expected = acked[j];
        let url = format!("{read_node}/keys/{key}");
        match http.get(&url).send().await {
            Ok(r) if r.status() == StatusCode::OK => {
                report.reads += 1;
                let text = r.text().await.unwrap_or_default();
                let got: u64 = text.parse().unwrap_or(0);
                if got < expected {
                    report
                        .violations
                        .push(format!("GET {url}: {got}, but {expected} was acknowledged"));
                }
            }
            Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                report.reads += 1;
                if expected > 0 {
                    report
                        .violations
                        .push(format!("GET {url}: 404, but {expected} was acknowledged"));
                }
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                report.failed.push(format!("GET {url}: {status} {body}"));
            }
            Err(err) => report.failed.push(format!("GET {url}: {err}")),
        }
    }
    report.acked = acked
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0)
        .map(|(i, v)| (format!("{prefix}{i}"), *v))
        .collect();
    report
}
