//! Membership changes over HTTP: `POST /leave`, `DELETE /ring/{node}`,
//! `POST /replicas?n=N`. Each answers once the change is done, with a JSON
//! summary (who received ranges, how many keys and bytes).

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiResult, AppState};
use crate::error::Error;
use crate::ring::NodeId;

/// `POST /leave`: this node hands its ranges over and stops.
pub async fn leave(State(state): State<AppState>) -> ApiResult<Response> {
    let summary = state.lifecycle.leave().await?;
    // Answer first, then stop: the notified server drains this response.
    state.left.notify_one();
    Ok(axum::Json(summary).into_response())
}

/// `POST /balance`: cluster-wide anti-entropy; what was compared and moved.
pub async fn balance(State(state): State<AppState>) -> ApiResult<Response> {
    let reply = state.lifecycle.balance_cluster().await?;
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

/// `?all=` of `/purge`.
#[derive(Debug, Default, Deserialize)]
pub struct PurgeParams {
    /// Every live member purges, not just this node.
    #[serde(default)]
    all: bool,
}

/// `POST /purge`: drops the keys this node no longer owns that every owner
/// holds; what was dropped and what was kept for now. `?all=true`: every
/// live member does it (asked over HTTP), each report under its name.
pub async fn purge(
    State(state): State<AppState>,
    query: Result<Query<PurgeParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let all = query.map(|Query(q)| q.all).unwrap_or(false);
    let report = state.lifecycle.purge().await?;
    if !all {
        return Ok(axum::Json(report).into_response());
    }
    let mut nodes = serde_json::Map::new();
    nodes.insert(
        state.node.to_string(),
        serde_json::to_value(&report).unwrap_or_default(),
    );
    let ring = state.coordinator.ring();
    let others: Vec<String> = ring
        .members()
        .filter(|m| m.live && m.id != state.node && m.state != crate::ring::MemberState::Removed)
        .map(|m| m.id.to_string())
        .collect();
    let calls = others.iter().map(|node| async move {
        let result = match crate::client::Client::new(vec![node.clone()]) {
            Ok(client) => client.purge(false).await,
            Err(err) => Err(err),
        };
        (node.clone(), result)
    });
    for (node, result) in futures::future::join_all(calls).await {
        let value = match result {
            Ok(report) => report,
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        nodes.insert(node, value);
    }
    Ok(axum::Json(serde_json::json!({ "nodes": nodes })).into_response())
}

/// `DELETE /ring/{host:port}`: removes a dead member for good.
pub async fn remove(State(state): State<AppState>, uri: Uri) -> ApiResult<Response> {
    let raw = uri.path().trim_start_matches("/ring/");
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Error::invalid("the node is not UTF-8"))?;
    let node = NodeId::parse(&decoded)?;
    let summary = state.lifecycle.remove(&node).await?;
    Ok(axum::Json(summary).into_response())
}

/// `?n=` of `/replicas`.
#[derive(Debug, Deserialize)]
pub struct ReplicasParams {
    /// The new replication factor.
    n: Option<String>,
}

/// `POST /replicas?n=N`: changes the cluster's replication factor and
/// re-replicates (or trims) to match.
pub async fn replicas(
    State(state): State<AppState>,
    query: Result<Query<ReplicasParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let raw = query
        .ok()
        .and_then(|Query(q)| q.n)
        .ok_or_else(|| Error::invalid("give the replication factor as ?n=N"))?;
    let n: usize = raw
        .parse()
        .map_err(|_| Error::invalid(format!("replication factor {raw:?} is not a number")))?;
    let summary = state.lifecycle.set_replicas(n).await?;
    Ok(axum::Json(summary).into_response())
}
