//! Membership changes and cluster-wide upkeep over HTTP: `POST /leave`,
//! `DELETE /ring/{node}`, `POST /replicas?n=N`, `POST /balance`,
//! `POST /purge`.
//!
//! A removal or a change of N runs in the background until done: the
//! request waits for it up to `?wait=` (default [`DEFAULT_WAIT`]) and
//! answers 200 with a summary (who received ranges, how many keys and
//! bytes) or 202 with what it is doing (also shown in `/ring`). Balance and
//! purge wait as long for the ring to settle (no transition under way,
//! every live member seeing the same ring), then run; 503 with
//! `Retry-After` if it did not settle in time.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiResult, AppState};
use crate::error::Error;
use crate::lifecycle::Started;
use crate::ring::NodeId;

/// How long a request waits for a change to be done, or for the ring to
/// settle, unless `?wait=` says otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// `?wait=` (a duration: `30s`, `500ms`, `0`).
#[derive(Debug, Default, Deserialize)]
pub struct WaitParams {
    /// How long to wait.
    wait: Option<String>,
}

impl WaitParams {
    fn wait(&self) -> Result<Duration, Error> {
        match &self.wait {
            None => Ok(DEFAULT_WAIT),
            Some(raw) => crate::config::parse_duration(raw)
                .map_err(|e| Error::invalid(format!("?wait= {e} (e.g. 30s, 500ms)"))),
        }
    }
}

/// The query string, or a clear error.
fn query<T: Default>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    super::keys::params(query)
}

/// 200 with the summary, or 202 with what the change is doing.
fn started(started: Started) -> Response {
    match started {
        Started::Done(summary) => axum::Json(summary).into_response(),
        Started::Running(status) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({
                "action": status.action,
                "target": status.target,
                "in_progress": true,
                "waiting_for": status.waiting_for,
                "lagging": status.lagging,
                "gainers_left": status.gainers_left,
                "last_error": status.last_error,
                "progress": "GET /ring shows it under `transitions`",
            })),
        )
            .into_response(),
    }
}

/// `POST /leave`: this node hands its ranges over and stops.
pub async fn leave(State(state): State<AppState>) -> ApiResult<Response> {
    let summary = state.lifecycle.leave(false).await?;
    // Answer first, then stop: the notified server drains this response.
    state.left.notify_one();
    Ok(axum::Json(summary).into_response())
}

/// `POST /balance`: cluster-wide anti-entropy; what was compared and moved.
pub async fn balance(
    State(state): State<AppState>,
    params: Result<Query<WaitParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let wait = query(params)?.wait()?;
    let reply = state.lifecycle.balance_cluster(wait).await?;
    Ok(axum::Json(serde_json::json!({
        "ranges": reply.ranges,
        "pairs": reply.pairs,
        "hashes_compared": reply.hashes,
        "leaves_differing": reply.leaves,
        "pulled": reply.pulled,
        "pushed": reply.pushed,
        "tombstones_dropped": reply.tombstones_dropped,
        "bytes_sent": reply.bytes_sent,
        "bytes_received": reply.bytes_received,
        "failed": reply.failed,
    }))
    .into_response())
}

/// `?all=` and `?wait=` of `/purge`.
#[derive(Debug, Default, Deserialize)]
pub struct PurgeParams {
    /// Every live member purges, not just this node.
    #[serde(default)]
    all: bool,
    /// How long to wait for the ring to settle.
    wait: Option<String>,
}

/// `POST /purge`: drops the keys this node no longer owns that every owner
/// holds; what was dropped and what was kept for now. `?all=true`: every
/// live member does it (asked over the node-to-node RPC, each waiting as
/// long for its ring to settle), each report under its name.
pub async fn purge(
    State(state): State<AppState>,
    params: Result<Query<PurgeParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let params = query(params)?;
    let wait = WaitParams { wait: params.wait }.wait()?;
    let report = state.lifecycle.purge(wait).await?;
    if !params.all {
        return Ok(axum::Json(report).into_response());
    }
    let mut nodes = serde_json::Map::new();
    nodes.insert(
        state.node.to_string(),
        serde_json::to_value(&report).unwrap_or_default(),
    );
    for (node, result) in state.lifecycle.purge_others(wait).await {
        let value = match result {
            Ok(report) => serde_json::to_value(&report).unwrap_or_default(),
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        nodes.insert(node.to_string(), value);
    }
    Ok(axum::Json(serde_json::json!({ "nodes": nodes })).into_response())
}

/// `DELETE /ring/{host:port}`: removes a dead member for good: 200 when
/// done, 202 while it goes on, 404 for an unknown member, 409 for one that
/// answers (it is up) or is removed already.
pub async fn remove(
    State(state): State<AppState>,
    uri: Uri,
    params: Result<Query<WaitParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let wait = query(params)?.wait()?;
    let raw = uri.path().trim_start_matches("/ring/");
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Error::invalid("the node is not UTF-8"))?;
    let node = NodeId::parse(&decoded).map_err(Error::from)?;
    Ok(started(state.lifecycle.remove(&node, wait).await?))
}

/// `?n=` and `?wait=` of `/replicas`.
#[derive(Debug, Default, Deserialize)]
pub struct ReplicasParams {
    /// The new replication factor.
    n: Option<String>,
    /// How long to wait for the change to be done.
    wait: Option<String>,
}

/// `POST /replicas?n=N`: changes the cluster's replication factor and
/// re-replicates (or trims) to match.
pub async fn replicas(
    State(state): State<AppState>,
    params: Result<Query<ReplicasParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let params = query(params)?;
    let raw = params
        .n
        .ok_or_else(|| Error::invalid("give the replication factor as ?n=N"))?;
    let n: usize = raw
        .parse()
        .map_err(|_| Error::invalid(format!("replication factor {raw:?} is not a number")))?;
    let wait = WaitParams { wait: params.wait }.wait()?;
    Ok(started(state.lifecycle.set_replicas(n, wait).await?))
}
