//! The HTTP client of ringkv, used by the CLI, the bench and the tests.
//!
//! It knows several nodes and fails over: a request that cannot reach a
//! node, or that the node answers with 502/503/504, is tried on the next
//! one (bodies that cannot be replayed, such as stdin, are sent once).
//! Connections are kept alive and reused.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

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
    /// Any stream, sent once.
    Stream(reqwest::Body),
}

/// A client for a set of nodes.
#[derive(Clone)]
pub struct Client {
    /// Keep-alive connection pool.
    http: reqwest::Client,
    /// Nodes as `host:port`, tried in order.
    nodes: Vec<String>,
}

impl Client {
    /// A client for `nodes` (`host:port`, at least one).
    pub fn new(nodes: Vec<String>) -> Result<Client> {
        if nodes.is_empty() {
            return Err(Error::invalid("no node given (use --node or RINGKV_NODE)"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| Error::invalid(format!("http client: {e}")))?;
        Ok(Client { http, nodes })
    }

    /// The nodes this client talks to.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Sends the request `build` makes for a base URL, failing over to the
    /// next node on connection errors and 502/503/504 when `replayable`.
    async fn send(
        &self,
        replayable: bool,
        mut build: impl FnMut(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    ) -> Result<(String, reqwest::Response)> {
        let mut last = None;
        for node in &self.nodes {
            let base = format!("http://{node}");
            let result = build(&self.http, &base)?.send().await;
            match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if replayable
                        && matches!(status, 502..=504)
                        && node != self.nodes.last().unwrap_or(node)
                    {
                        last = Some(error_from(node, response).await);
                        continue;
                    }
                    return Ok((node.clone(), response));
                }
                Err(err) => {
                    let err = Error::Unreachable {
                        node: node.clone(),
                        reason: describe(&err),
                    };
                    if !replayable {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid("no node to ask")))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        build: impl FnMut(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    ) -> Result<T> {
        self.send_json(true, build).await
    }

    /// Sends (failing over when `replayable`) and reads a JSON answer, or
    /// the error the answer carries.
    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        replayable: bool,
        build: impl FnMut(&reqwest::Client, &str) -> Result<reqwest::RequestBuilder>,
    ) -> Result<T> {
        let (node, response) = self.send(replayable, build).await?;
        if !response.status().is_success() {
            return Err(error_from(&node, response).await);
        }
        response.json::<T>().await.map_err(|e| Error::Remote {
            node,
            status: 200,
            message: format!("unreadable JSON reply: {e}"),
        })
    }

    /// Stores a value.
    pub async fn put(
        &self,
        key: &str,
        upload: Upload,
        content_type: Option<&str>,
        w: Option<&str>,
    ) -> Result<WriteReply> {
        let url_path = format!("/keys/{}", crate::key::to_url_path(key));
        let replayable = !matches!(upload, Upload::Stream(_));
        let mut upload = Some(upload);
        let (node, response) = self
            .send(replayable, |http, base| {
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
                        let file = std::fs::File::open(path)?;
                        let length = file.metadata()?.len();
                        request = request.header(reqwest::header::CONTENT_LENGTH, length);
                        let reader = tokio::fs::File::from_std(file);
                        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                            reader,
                            256 * 1024,
                        ))
                    }
                    Some(Upload::Stream(_)) => match upload.take() {
                        Some(Upload::Stream(body)) => body,
                        _ => return Err(Error::invalid("a stream can be sent only once")),
                    },
                    None => return Err(Error::invalid("a stream can be sent only once")),
                };
                Ok(request.body(body))
            })
            .await?;
        if !response.status().is_success() {
            return Err(error_from(&node, response).await);
        }
        response.json().await.map_err(|e| Error::Remote {
            node,
            status: 201,
            message: format!("unreadable JSON reply: {e}"),
        })
    }

    /// Reads a value; the response streams its body. `Ok(None)` when the key
    /// does not exist.
    pub async fn get(&self, key: &str, r: Option<&str>) -> Result<Option<reqwest::Response>> {
        let url_path = format!("/keys/{}", crate::key::to_url_path(key));
        let (node, response) = self
            .send(true, |http, base| {
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
        let url_path = format!("/keys/{}", crate::key::to_url_path(key));
        self.json(|http, base| {
            let mut request = http.delete(format!("{base}{url_path}"));
            if let Some(w) = w {
                request = request.query(&[("w", w)]);
            }
            Ok(request)
        })
        .await
    }

    /// What the first reachable node stores for `key`.
    pub async fn haskey(&self, key: &str) -> Result<HasKey> {
        let url_path = format!("/haskey/{}", crate::key::to_url_path(key));
        self.json(|http, base| Ok(http.get(format!("{base}{url_path}"))))
            .await
    }

    /// The key's replicas, preference order.
    pub async fn whereis(&self, key: &str) -> Result<Vec<String>> {
        let url_path = format!("/whereis/{}", crate::key::to_url_path(key));
        self.json(|http, base| Ok(http.get(format!("{base}{url_path}"))))
            .await
    }

    /// The ring as the node sees it (`GET /ring`).
    pub async fn ring(&self) -> Result<Value> {
        self.json(|http, base| Ok(http.get(format!("{base}/ring"))))
            .await
    }

    /// A page of the node's keys (`GET /keys`).
    pub async fn keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Value> {
        self.json(|http, base| {
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
        self.send_json(false, |http, base| Ok(http.post(format!("{base}/leave"))))
            .await
    }

    /// Removes a dead member for good (`DELETE /ring/{node}`).
    pub async fn remove(&self, member: &str) -> Result<Value> {
        let path =
            percent_encoding::utf8_percent_encode(member, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        self.json(|http, base| Ok(http.delete(format!("{base}/ring/{path}"))))
            .await
    }

    /// Cluster-wide anti-entropy (`POST /balance`).
    pub async fn balance(&self) -> Result<Value> {
        self.json(|http, base| Ok(http.post(format!("{base}/balance"))))
            .await
    }

    /// Drops the keys the node no longer owns (`POST /purge`); `all`: every
    /// member does it.
    pub async fn purge(&self, all: bool) -> Result<Value> {
        self.json(|http, base| {
            Ok(http
                .post(format!("{base}/purge"))
                .query(&[("all", all.to_string())]))
        })
        .await
    }

    /// Changes the cluster's replication factor (`POST /replicas?n=`).
    pub async fn set_replicas(&self, n: usize) -> Result<Value> {
        self.json(|http, base| {
            Ok(http
                .post(format!("{base}/replicas"))
                .query(&[("n", n.to_string())]))
        })
        .await
    }

    /// `GET /health` of the first node that answers.
    pub async fn health(&self) -> Result<Value> {
        let (_, response) = self
            .send(true, |http, base| Ok(http.get(format!("{base}/health"))))
            .await?;
        response.json().await.map_err(|e| Error::Aborted {
            reason: describe(&e),
        })
    }
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

/// Turns an error response into an [`Error::Remote`] with the server's message.
async fn error_from(node: &str, response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text);
    Error::Remote {
        node: node.to_string(),
        status,
        message,
    }
}
