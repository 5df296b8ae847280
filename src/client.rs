//! The HTTP client of ringkv, used by the CLI, the bench and the tests.
//!
//! It knows several nodes and fails over: a request that cannot reach a
//! node, or that the node answers with 502/503/504, is tried on the next
//! one. With [`ClientOptions::retries`] it then waits (exponential backoff
//! with jitter) and goes round the nodes again; with
//! [`ClientOptions::discover`] it learns the cluster's other members from
//! `/ring` of the first node that answers and fails over to them too, so
//! that one `--node` is enough to survive that node going down later.
//! Requests about one node's own state (`/haskey`, `/keys`, `/purge`,
//! `/health`) fail over only between the nodes it was given, and a
//! `/leave` goes to the first one only.
//!
//! Bodies that cannot be replayed (a stream such as stdin) are sent once.
//! Every other request is safe to repeat: a PUT or DELETE of a key writes
//! the same value again under a newer version. Connections are kept alive
//! and reused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ring::NodeId;

/// First pause before going round the nodes again; doubled each round and
/// jittered by ±50 %, so that the CLI's default 2 retries wait 0.5 s then
/// 1 s (0.75–2.25 s in all) before giving up: long enough for a node
/// restarting on a local cluster, short enough for a person waiting.
pub const RETRY_BASE_DELAY_MS: u64 = 500;
/// Cap of one pause between rounds.
pub const RETRY_MAX_DELAY_MS: u64 = 2_000;

/// How a [`Client`] retries and fails over.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Further rounds over the nodes after a first one where none answered
    /// (0: one round, as `Client::new` does).
    pub retries: u32,
    /// Pause before the first further round (doubled each round, jittered).
    pub base_delay: Duration,
    /// Learn the cluster's members from `/ring` of the first node that
    /// answers, and fail over to them as well.
    pub discover: bool,
    /// The API token sent as `Authorization: Bearer` with every request
    /// (`--token`, `RINGKV_TOKEN`); never logged.
    pub token: Option<String>,
    /// Talk HTTPS: verified against the system's roots, or only against
    /// the CA certificates (PEM) of this file (`--tls`, `--ca`).
    pub tls: Option<ClientTls>,
}

/// How a client verifies nodes serving TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificates (PEM) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
}

impl Default for ClientOptions {
    /// One round over the given nodes, nothing learnt: what a benchmark or
    /// a node asking its peers wants (failures show, no hidden waits).
    fn default() -> Self {
        ClientOptions {
            retries: 0,
            base_delay: Duration::from_millis(RETRY_BASE_DELAY_MS),
            discover: false,
            token: None,
            tls: None,
        }
    }
}

/// The reply to a PUT or DELETE.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteReply {
    /// The key written.
    pub key: String,
    /// Its version's timestamp (ns since the epoch, F11).
    pub timestamp: u64,
    /// Its replicas, preference order.
    pub replicas: Vec<String>,
    /// The replicas that confirmed.
    pub stored_on: Vec<String>,
}

/// `/haskey`: what one node stores.
#[derive(Debug, Clone, Deserialize)]
pub struct HasKey {
    /// The key.
    pub key: String,
    /// Version timestamp, 0 when absent.
    pub timestamp: u64,
    /// Whether that version is a tombstone.
    pub deleted: bool,
}

/// Where a PUT's body comes from.
pub enum Upload {
    /// Bytes in memory (replayable).
    Bytes(Bytes),
    /// A file, streamed from disk (replayable).
    File(PathBuf),
    /// A file, streamed from disk (replayable), each piece shown to a
    /// watcher as it is read: progress bars, checksums of what was sent.
    WatchedFile(PathBuf, Arc<dyn UploadWatch>),
    /// Any stream, sent once.
    Stream(reqwest::Body),
}

/// Sees the bytes of an [`Upload::WatchedFile`] as they are read for
/// sending. A retry or fail-over sends the file again from its start,
/// announced by [`UploadWatch::restart`].
pub trait UploadWatch: Send + Sync {
    /// An attempt starts (again) from byte 0: forget what was seen.
    fn restart(&self);
    /// `piece` was read from the file and goes out next.
    fn sent(&self, piece: &[u8]);
}

/// Which nodes a request may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Any member: the answer is the cluster's (keys, ring, balance…).
    Cluster,
    /// Only the nodes given: the answer is about that node's own state.
    Given,
    /// Only the first node given, once: it is that node that must act.
    First,
}

/// How one request is sent.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// The body can be built again for another attempt.
    replayable: bool,
    /// Where it may go.
    scope: Scope,
    /// 502/503/504 answers are failures to retry elsewhere; when false they
    /// are handed back like any answer (`/health` says "not ready" by 503).
    retry_unavailable: bool,
}

impl Policy {
    const CLUSTER: Policy = Policy {
        replayable: true,
        scope: Scope::Cluster,
        retry_unavailable: true,
    };
    const GIVEN: Policy = Policy {
        replayable: true,
        scope: Scope::Given,
        retry_unavailable: true,
    };
}

/// Nodes learnt while running.
#[derive(Debug, Default)]
struct Known {
    /// The node that answered last: tried first, so that a dead node
    /// listed first costs one failed connection, not one per request.
    preferred: Option<String>,
    /// Members learnt from `/ring` (those not given), in its order.
    learnt: Vec<String>,
}

/// A client for a set of nodes.
#[derive(Clone)]
pub struct Client {
    /// Keep-alive connection pool.
    http: reqwest::Client,
    /// Nodes as `host:port`, as given, tried in order.
    nodes: Vec<String>,
    /// Retries and discovery.
    options: ClientOptions,
    /// What was learnt: shared by clones (the CLI's parallel transfers).
    known: Arc<Mutex<Known>>,
    /// Set once discovery was started, so that it runs once.
    discovered: Arc<AtomicBool>,
}

impl Client {
    /// A client for `nodes` (`host:port`, at least one) that makes one
    /// round over them and learns nothing ([`ClientOptions::default`]).
    pub fn new(nodes: Vec<String>) -> Result<Client> {
        Client::with_options(nodes, ClientOptions::default())
    }

    /// A client for `nodes` that retries and discovers as `options` say.
    pub fn with_options(nodes: Vec<String>, options: ClientOptions) -> Result<Client> {
        if nodes.is_empty() {
            return Err(Error::invalid("no node given (use --node or RINGKV_NODE)"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &options.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::invalid("the API token holds characters a header cannot"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = crate::tls::http_client_builder();
        if let Some(tls) = &options.tls {
            crate::tls::install_provider();
            builder = builder.https_only(true);
            if let Some(path) = &tls.ca {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::invalid(format!("--ca {}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    Error::invalid(format!("--ca {}: no PEM certificate ({e})", path.display()))
                })?;
                builder = builder.tls_certs_only(certs);
            }
        }
        let http = builder
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| Error::invalid(format!("http client: {e}")))?;
        Ok(Client {
            http,
            nodes,
            options,
            known: Arc::default(),
            discovered: Arc::default(),
        })
    }

    /// `https` when the client talks TLS, else `http`.
    fn scheme(&self) -> &'static str {
        if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The nodes this client was given.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The members learnt from `/ring` (not counting the nodes given).
    pub fn learnt(&self) -> Vec<String> {
        self.lock_known().learnt.clone()
    }

    /// A client for `node` alone, sharing this one's connections and retry
    /// settings but not failing over (to ask one node about itself).
    pub fn for_node(&self, node: &str) -> Client {
        Client {
            http: self.http.clone(),
            nodes: vec![node.to_string()],
            options: ClientOptions {
                discover: false,
                ..self.options.clone()
            },
            known: Arc::default(),
            discovered: Arc::new(AtomicBool::new(true)),
        }
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nodes to try, in order, for `scope`.
    fn candidates(&self, scope: Scope) -> Vec<String> {
        if scope == Scope::First {
            return self.nodes.iter().take(1).cloned().collect();
        }
        let known = self.lock_known();
        let mut order: Vec<String> = Vec::new();
        let mut add = |node: &String| {
            if !order.contains(node) {
                order.push(node.clone());
            }
        };
        if let Some(node) = &known.preferred
            && (scope == Scope::Cluster || self.nodes.contains(node))
        {
            add(node);
        }
        self.nodes.iter().for_each(&mut add);
        if scope == Scope::Cluster {
            known.learnt.iter().for_each(&mut add);
        }
        order
    }

    /// The pause before round `round` (1, 2, …): the base doubled each
    /// round, capped, jittered by ±50 %.
    fn backoff(&self, round: u32) -> Duration {
        let base = self.options.base_delay.as_millis() as u64;
        let delay = base
            .saturating_mul(1 << round.saturating_sub(1).min(16))
            .min(RETRY_MAX_DELAY_MS);
        let jitter = 0.5 + rand::random::<f64>();
        Duration::from_millis((delay as f64 * jitter) as u64)
    }

    /// Learns the members from `node`'s `/ring`, once per client.
    async fn discover(&self, node: &str) {
        if !self.options.discover || self.discovered.swap(true, Ordering::AcqRel) {
            return;
        }
        let answer = async {
            self.http
                .get(format!("{}://{node}/ring", self.scheme()))
                .timeout(Duration::from_secs(5))
                .send()
                .await?
                .error_for_status()?
                .json::<Value>()
                .await
        };
        match answer.await {
            Ok(ring) => {
                let learnt: Vec<String> = ring["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str())
                    .filter(|n| !self.nodes.iter().any(|given| given == n))
                    .map(str::to_string)
                    .collect();
                tracing::debug!(from = node, ?learnt, "learnt the cluster's members");
                self.lock_known().learnt = learnt;
            }
            Err(err) => {
                tracing::debug!(from = node, err = %describe(&err), "could not learn the members")
            }
        }
    }

    /// Sends the request `build` makes for a base URL under `policy`: the
    /// nodes in turn; when none answered, further rounds after a backoff
    /// (when `policy.replayable`). The first answer that is not a 502/503/504
    /// (or any answer, unless `policy.retry_unavailable`) is returned with
    /// the node that gave it.
    async fn send(
        &self,
        policy: Policy,
        mut build: impl FnMut(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    ) -> Result<(String, reqwest::Response)> {
        let rounds = if policy.replayable && policy.scope != Scope::First {
            self.options.retries + 1
        } else {
            1
        };
        // A node's answer says more than a failed connection elsewhere.
        let mut unreachable: Vec<String> = Vec::new();
        let mut answered = None;
        let mut refused = None;
        for round in 0..rounds {
            if round > 0 {
                let pause = self.backoff(round);
                tracing::debug!(?pause, round, "no node answered; trying again");
                tokio::time::sleep(pause).await;
            }
            for node in self.candidates(policy.scope) {
                let base = format!("{}://{node}", self.scheme());
                match build(&self.http, &base)?.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        if policy.retry_unavailable && matches!(status, 502..=504) {
                            answered = Some(error_from(&node, response).await);
                            if !policy.replayable {
                                break;
                            }
                            continue;
                        }
                        self.lock_known().preferred = Some(node.clone());
                        self.discover(&node).await;
                        return Ok((node, response));
                    }
                    Err(err) => {
                        tracing::debug!(%node, err = %describe(&err), "request failed");
                        if !unreachable.contains(&node) {
                            unreachable.push(node.clone());
                        }
                        refused = Some(Error::Unreachable {
                            node: unreachable.join(", "),
                            reason: short_reason(&err),
                        });
                        if !policy.replayable {
                            break;
                        }
                    }
                }
            }
            if !policy.replayable {
                break;
            }
        }
        Err(answered
            .or(refused)
            .unwrap_or_else(|| Error::invalid("no node to ask")))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        policy: Policy,
        build: impl FnMut(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    ) -> Result<T> {
        let (node, response) = self.send(policy, build).await?;
        if !response.status().is_success() {
            return Err(error_from(&node, response).await);
        }
        read_json(node, response).await
    }

    /// Stores a value.
    pub async fn put(
        &self,
        key: &str,
        upload: Upload,
        content_type: Option<&str>,
        w: Option<&str>,
    ) -> Result<WriteReply> {
        let url_path = format!("/keys/{}", key_path(key)?);
        let policy = Policy {
            replayable: !matches!(upload, Upload::Stream(_)),
            ..Policy::CLUSTER
        };
        let mut upload = Some(upload);
        self.json(policy, |http, base| {
            let mut request = http.put(format!("{base}{url_path}"));
            if let Some(ct) = content_type {
                request = request.header(reqwest::header::CONTENT_TYPE, ct);
            }
            if let Some(w) = w {
                request = request.query(&[("w", w)]);
            }
            let body = match &upload {
                Some(Upload::Bytes(bytes)) => reqwest::Body::from(bytes.clone()),
                Some(Upload::File(path)) => {
                    let (length, body) = file_body(path, None)?;
                    request = request.header(reqwest::header::CONTENT_LENGTH, length);
                    body
                }
                Some(Upload::WatchedFile(path, watch)) => {
                    let (length, body) = file_body(path, Some(watch.clone()))?;
                    request = request.header(reqwest::header::CONTENT_LENGTH, length);
                    body
                }
                Some(Upload::Stream(_)) => match upload.take() {
                    Some(Upload::Stream(body)) => body,
                    _ => return Err(Error::invalid("a stream can be sent only once")),
                },
                None => return Err(Error::invalid("a stream can be sent only once")),
            };
            Ok(request.body(body))
        })
        .await
    }

    /// Reads a value; the response streams its body. `Ok(None)` when the key
    /// does not exist.
    pub async fn get(&self, key: &str, r: Option<&str>) -> Result<Option<reqwest::Response>> {
        let url_path = format!("/keys/{}", key_path(key)?);
        let (node, response) = self
            .send(Policy::CLUSTER, |http, base| {
                let mut request = http.get(format!("{base}{url_path}"));
                if let Some(r) = r {
                    request = request.query(&[("r", r)]);
                }
                Ok(request)
            })
            .await?;
        match response.status().as_u16() {
            200 => Ok(Some(response)),
            404 => Ok(None),
            _ => Err(error_from(&node, response).await),
        }
    }

    /// Reads a whole value into memory.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key, None).await? {
            Some(response) => response
                .bytes()
                .await
                .map(Some)
                .map_err(|e| Error::Aborted {
                    reason: describe(&e),
                }),
            None => Ok(None),
        }
    }

    /// Deletes a key (writes a tombstone).
    pub async fn delete(&self, key: &str, w: Option<&str>) -> Result<WriteReply> {
        let url_path = format!("/keys/{}", key_path(key)?);
        self.json(Policy::CLUSTER, |http, base| {
            let mut request = http.delete(format!("{base}{url_path}"));
            if let Some(w) = w {
                request = request.query(&[("w", w)]);
            }
            Ok(request)
        })
        .await
    }

    /// What the first reachable node given stores for `key`.
    pub async fn haskey(&self, key: &str) -> Result<HasKey> {
        let url_path = format!("/haskey/{}", key_path(key)?);
        self.json(Policy::GIVEN, |http, base| {
            Ok(http.get(format!("{base}{url_path}")))
        })
        .await
    }

    /// The key's replicas, preference order.
    pub async fn whereis(&self, key: &str) -> Result<Vec<String>> {
        let url_path = format!("/whereis/{}", key_path(key)?);
        self.json(Policy::CLUSTER, |http, base| {
            Ok(http.get(format!("{base}{url_path}")))
        })
        .await
    }

    /// The ring as the node sees it (`GET /ring`).
    pub async fn ring(&self) -> Result<Value> {
        self.json(Policy::CLUSTER, |http, base| {
            Ok(http.get(format!("{base}/ring")))
        })
        .await
    }

    /// A page of the keys the first reachable node given stores (`GET /keys`).
    pub async fn keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Value> {
        self.json(Policy::GIVEN, |http, base| {
            let mut request = http
                .get(format!("{base}/keys"))
                .query(&[("prefix", prefix), ("limit", &limit.to_string())]);
            if let Some(after) = after {
                request = request.query(&[("after", after)]);
            }
            Ok(request)
        })
        .await
    }

    /// Makes the first node leave the cluster (`POST /leave`); answers once
    /// it has handed its ranges over. Never fails over: it is that node
    /// that must leave.
    pub async fn leave(&self) -> Result<Value> {
        let policy = Policy {
            replayable: false,
            scope: Scope::First,
            retry_unavailable: false,
        };
        self.json(policy, |http, base| Ok(http.post(format!("{base}/leave"))))
            .await
    }

    /// Removes a dead member for good (`DELETE /ring/{node}`).
    pub async fn remove(&self, member: &str) -> Result<Value> {
        let path =
            percent_encoding::utf8_percent_encode(member, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        self.json(Policy::CLUSTER, |http, base| {
            Ok(http.delete(format!("{base}/ring/{path}")))
        })
        .await
    }

    /// Cluster-wide anti-entropy (`POST /balance`).
    pub async fn balance(&self) -> Result<Value> {
        self.json(Policy::CLUSTER, |http, base| {
            Ok(http.post(format!("{base}/balance")))
        })
        .await
    }

    /// Drops the keys the node no longer owns (`POST /purge`); `all`: every
    /// member does it (asked through any member).
    pub async fn purge(&self, all: bool) -> Result<Value> {
        let policy = if all { Policy::CLUSTER } else { Policy::GIVEN };
        self.json(policy, |http, base| {
            Ok(http
                .post(format!("{base}/purge"))
                .query(&[("all", all.to_string())]))
        })
        .await
    }

    /// Changes the cluster's replication factor (`POST /replicas?n=`).
    pub async fn set_replicas(&self, n: usize) -> Result<Value> {
        self.json(Policy::CLUSTER, |http, base| {
            Ok(http
                .post(format!("{base}/replicas"))
                .query(&[("n", n.to_string())]))
        })
        .await
    }

    /// `GET /health` of the first node given that answers (a 503 "not
    /// ready" is an answer).
    pub async fn health(&self) -> Result<Value> {
        let policy = Policy {
            retry_unavailable: false,
            ..Policy::GIVEN
        };
        let (node, response) = self
            .send(policy, |http, base| Ok(http.get(format!("{base}/health"))))
            .await?;
        read_json(node, response).await
    }
}

/// `key` percent-encoded for a URL path. A key with a `.` or `..`
/// segment has its `/` encoded too: URL parsing resolves dot segments
/// (even percent-encoded ones), so that `a/../b` would be sent as `b`;
/// the server decodes the whole path into the key either way. The keys
/// `.` and `..` themselves cannot be sent at all.
fn key_path(key: &str) -> Result<String> {
    if key == "." || key == ".." {
        return Err(Error::invalid(format!(
            "the key `{key}` cannot be put in a URL (it would be resolved away); choose another"
        )));
    }
    let dotted = key
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    Ok(if dotted {
        percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
    } else {
        crate::key::to_url_path(key)
    })
}

/// A file as a request body: its length and a stream of its pieces, shown
/// to `watch` (told first that an attempt starts).
fn file_body(
    path: &std::path::Path,
    watch: Option<Arc<dyn UploadWatch>>,
) -> Result<(u64, reqwest::Body)> {
    let file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let pieces =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024);
    let body = match watch {
        None => reqwest::Body::wrap_stream(pieces),
        Some(watch) => {
            watch.restart();
            reqwest::Body::wrap_stream(pieces.inspect(move |piece| {
                if let Ok(piece) = piece {
                    watch.sent(piece);
                }
            }))
        }
    };
    Ok((length, body))
}

/// Reads a JSON reply.
async fn read_json<T: serde::de::DeserializeOwned>(
    node: String,
    response: reqwest::Response,
) -> Result<T> {
    let status = response.status().as_u16();
    response.json::<T>().await.map_err(|e| Error::Remote {
        node,
        status,
        message: format!("unreadable JSON reply: {}", describe(&e)),
    })
}

/// The message of a reqwest error, with its causes.
fn describe(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Why a connection failed, in a few words ("connection refused",
/// "timed out"): the innermost cause, without its OS error number.
fn short_reason(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".into();
    }
    let mut innermost: &dyn std::error::Error = err;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    let text = innermost.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => describe(err),
    }
}

/// Turns an error response into an [`Error`]: [`Error::Unavailable`] with
/// the replicas that answered when the body says so (a quorum not met),
/// else [`Error::Remote`] with the server's message.
async fn error_from(node: &str, response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str::<Value>(&text).ok();
    if let Some(unavailable) = body.as_ref().and_then(unavailable_from) {
        return unavailable;
    }
    let message = body
        .as_ref()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text);
    Error::Remote {
        node: node.to_string(),
        status,
        message,
    }
}

/// The [`Error::Unavailable`] a 503 body describes (`needed`, `got`,
/// `answered`, `failed`), if it is one.
fn unavailable_from(body: &Value) -> Option<Error> {
    if body["code"] != "unavailable" {
        return None;
    }
    let count = |field: &str| body[field].as_u64().map(|n| n as usize);
    let nodes = |list: &Value| -> Vec<Value> { list.as_array().cloned().unwrap_or_default() };
    Some(Error::Unavailable {
        needed: count("needed")?,
        got: count("got")?,
        answered: nodes(&body["answered"])
            .iter()
            .filter_map(|n| n.as_str().and_then(|n| NodeId::parse(n).ok()))
            .collect(),
        failed: nodes(&body["failed"])
            .iter()
            .filter_map(|f| {
                let node = NodeId::parse(f["node"].as_str()?).ok()?;
                Some((node, f["error"].as_str().unwrap_or_default().to_string()))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_of_keys_survive_url_parsing() {
        for key in ["a/../b", "./x", "../..", "a/./b/..", "a b/c", "a//b"] {
            let path = key_path(key).unwrap();
            let url = reqwest::Url::parse(&format!("http://h:1/keys/{path}")).unwrap();
            let sent = url.path().strip_prefix("/keys/").unwrap();
            assert_eq!(crate::key::from_url_path(sent).unwrap(), key);
        }
        assert!(key_path("..").is_err() && key_path(".").is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let client = Client::with_options(
            vec!["h:1".into()],
            ClientOptions {
                retries: 5,
                ..ClientOptions::default()
            },
        )
        .unwrap();
        for round in 1..=8u32 {
            let pause = client.backoff(round).as_millis() as u64;
            let nominal = (RETRY_BASE_DELAY_MS << (round - 1)).min(RETRY_MAX_DELAY_MS);
            assert!(
                pause >= nominal / 2 && pause <= nominal * 3 / 2,
                "round {round}: {pause} ms"
            );
        }
    }

    #[test]
    fn a_quorum_error_answer_becomes_unavailable() {
        let body = serde_json::json!({
            "error": "unavailable: needed 2 replicas, 1 answered",
            "code": "unavailable", "status": 503, "needed": 2, "got": 1,
            "answered": ["a:1"], "failed": [{"node": "b:1", "error": "down"}],
        });
        match unavailable_from(&body) {
            Some(Error::Unavailable {
                needed: 2,
                got: 1,
                answered,
                failed,
            }) => {
                assert_eq!(answered[0].as_str(), "a:1");
                assert_eq!(failed[0].0.as_str(), "b:1");
            }
            other => panic!("{other:?}"),
        }
        let not_ready = serde_json::json!({"error": "x", "code": "not_ready", "status": 503});
        assert!(unavailable_from(&not_ready).is_none());
    }
}
