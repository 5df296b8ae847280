//! Cluster routes: `/ring`, `/whereis`, `/haskey`, `/health`, `/health/live`.

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, AppState};
use crate::ring::MemberState;

/// `GET /ring`: members, their state, zone, load and tokens, transfers,
/// anti-entropy and scrub in progress, and the digest each member reports.
pub async fn ring(State(state): State<AppState>) -> Response {
    let ring = state.coordinator.ring();
    let loads = ring.load_shares();
    let view = state.membership.view();
    let members: Vec<serde_json::Value> = ring
        .members()
        .map(|m| {
            let parsed = |map: &std::collections::BTreeMap<_, String>| {
                map.get(&m.id)
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            };
            let (transfer, repair) = (parsed(&view.transfers), parsed(&view.repairs));
            let (scrub, stats) = (parsed(&view.scrubs), parsed(&view.stats));
            json!({
                "node": m.id,
                "state": m.shown_state().as_str(),
                "announced": m.state.as_str(),
                "owns_ranges": m.state.owns_ranges(),
                "live": m.live,
                "zone": m.zone,
                "tokens": m.tokens.len(),
                "load": loads.get(&m.id).copied().unwrap_or(0.0),
                "digest": view.digests.get(&m.id),
                "transfer": transfer,
                "repair": repair,
                "scrub": scrub,
                "stats": stats,
                "resp": view.resp.get(&m.id),
                "url": format!("http://{}/", m.id),
            })
        })
        .collect();
    // `nodes`: the members that own ranges now (normal or leaving), the
    // ring `/whereis` places keys on; members still streaming their ranges
    // in are listed apart, and own nothing until they turn normal.
    let nodes: Vec<_> = ring
        .members()
        .filter(|m| m.state.owns_ranges())
        .map(|m| m.id.clone())
        .collect();
    let joining: Vec<_> = ring
        .members()
        .filter(|m| m.state == MemberState::Joining)
        .map(|m| m.id.clone())
        .collect();
    axum::Json(json!({
        "node": state.node,
        "nodes": nodes,
        "joining": joining,
        "replicas": ring.replicas(),
        "target_replicas": ring.target_replicas(),
        "in_transition": ring.in_transition(),
        "digest": format!("{:016x}", ring.digest()),
        "agreed": state.membership.agreed(),
        // Live members whose ring differs from this node's.
        "lagging": state.membership.lagging(&ring),
        "transitions": state.lifecycle.transitions(),
        "members": members,
    }))
    .into_response()
}

/// `?verbose=true` of `/whereis`.
#[derive(Debug, Default, Deserialize)]
pub struct WhereisParams {
    /// Objects with state and zone instead of bare node names.
    #[serde(default)]
    verbose: bool,
}

/// `GET /whereis/{key}`: the key's replicas in preference order.
pub async fn whereis(
    State(state): State<AppState>,
    uri: Uri,
    query: Result<Query<WhereisParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let key = crate::key::from_url_path(uri.path().trim_start_matches("/whereis/"))?;
    let verbose = query.map(|Query(q)| q.verbose).unwrap_or(false);
    let ring = state.coordinator.ring();
    let nodes = ring.nodes_of(key.as_bytes());
    if !verbose {
        return Ok(axum::Json(nodes).into_response());
    }
    let detail: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let member = ring.member(n);
            json!({
                "node": n,
                "preference": i,
                "state": member.map(|m| m.shown_state().as_str()),
                "zone": member.map(|m| m.zone.clone()),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "key": key, "replicas": detail })).into_response())
}

/// `GET /haskey/{key}`: what this node itself stores (MyDHT's HASKEY).
pub async fn haskey(State(state): State<AppState>, uri: Uri) -> ApiResult<Response> {
    let key = crate::key::from_url_path(uri.path().trim_start_matches("/haskey/"))?;
    let meta = state.store.record(&key)?.and_then(|r| r.meta);
    let (timestamp, deleted) = meta
        .as_ref()
        .map(|m| (m.version().timestamp, m.deleted))
        .unwrap_or((0, false));
    let mut body = json!({ "key": key, "timestamp": timestamp, "deleted": deleted });
    // F28: when the value expires (ms since the epoch, cluster time) and
    // whether it has.
    if let Some(m) = meta.as_ref().filter(|m| m.expires_at != 0 && !m.deleted) {
        body["expires"] = json!(m.expires_at);
        body["expired"] = json!(m.expired_at(state.coordinator.cluster_now_ms()));
    }
    Ok(axum::Json(body).into_response())
}

/// Resident and peak resident memory of this process, from /proc.
pub fn memory_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `GET /health`: liveness (it answers: always `live: true`) and readiness
/// as JSON; 200 when ready, else 503. Ready means every check is ok:
/// `gossip` (the node reached the cluster and published its tokens),
/// `ring` (the ring places keys, and this node is not leaving), `storage`
/// (the data dir takes writes, its disk has more than `--disk-reserve`
/// free, and the node is not re-syncing after an absence longer than the
/// tombstone grace period).
pub async fn health(State(state): State<AppState>) -> Response {
    let ring = state.coordinator.ring();
    let joined = state.membership.is_ready();
    let me = ring.member(&state.node);
    let live_members = ring
        .members()
        .filter(|m| m.live && m.state != crate::ring::MemberState::Removed)
        .count();
    let gossip = json!({
        "ok": joined,
        "joined": joined,
        "members": ring.members().count(),
        "live_members": live_members,
        "agreed": state.membership.agreed(),
    });
    let places_keys = !ring.nodes_of(b"").is_empty();
    let leaving = state.lifecycle.is_leaving();
    let ring_check = json!({
        "ok": places_keys && !leaving,
        "places_keys": places_keys,
        "leaving": leaving,
        "state": me.map(|m| m.shown_state().as_str()),
        "replicas": ring.replicas(),
        "in_transition": ring.in_transition(),
        "digest": format!("{:016x}", ring.digest()),
    });
    let writable = state.store.takes_writes().await;
    let catching_up = state.lifecycle.is_catching_up();
    let room = state.store.has_room();
    let mut storage = json!({
        "ok": writable.is_ok() && room && !catching_up,
        "writable": writable.is_ok(),
        "disk_full": !room,
        "catching_up": catching_up,
        "in_memory": state.lifecycle.data_dir().is_none(),
        "keys": state.store.key_count(),
        "hints_pending": state.store.hints_pending(),
        "disk_bytes": state.store.disk_bytes(),
    });
    if let Err(reason) = &writable {
        storage["error"] = json!(reason);
    }
    let ready = [&gossip, &ring_check, &storage]
        .iter()
        .all(|check| check["ok"] == true);
    let (rss, peak) = memory_bytes();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "node": state.node,
            "live": true,
            "ready": ready,
            "checks": { "gossip": gossip, "ring": ring_check, "storage": storage },
            "members": ring.members().count(),
            "ring_digest": format!("{:016x}", ring.digest()),
            "memory": { "rss_bytes": rss, "peak_rss_bytes": peak },
            "disk_bytes": state.store.disk_bytes(),
        })),
    )
        .into_response()
}

/// `GET /health/live`: liveness only, always 200 while the node answers
/// (for probes that restart a node: one that is not ready, e.g. still
/// joining or re-syncing, must not be restarted for it).
pub async fn live(State(state): State<AppState>) -> Response {
    axum::Json(json!({ "node": state.node, "live": true })).into_response()
}
