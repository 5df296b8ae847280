//! `GET /`: a first status page (members with links, this node's keys).
//! The full page (F22) is the status-page issue's work.

use axum::extract::State;
use axum::response::Html;

use super::AppState;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The status page.
pub async fn status_page(State(state): State<AppState>) -> Html<String> {
    let ring = state.coordinator.ring();
    let loads = ring.load_shares();
    let mut rows = String::new();
    for m in ring.members() {
        rows.push_str(&format!(
            "<tr><td><a href=\"http://{id}/\">{id}</a></td><td>{state}</td><td>{zone}</td><td>{load:.1}%</td></tr>",
            id = escape(m.id.as_str()),
            state = m.shown_state().as_str(),
            zone = escape(&m.zone),
            load = loads.get(&m.id).copied().unwrap_or(0.0) * 100.0,
        ));
    }
    let mut keys = String::new();
    for m in state.store.list("", None, 100).unwrap_or_default() {
        if m.deleted {
            continue;
        }
        keys.push_str(&format!(
            "<li><a href=\"/keys/{href}\">{key}</a> ({size} bytes, timestamp {ts})</li>",
            href = crate::key::to_url_path(&m.key),
            key = escape(&m.key),
            size = m.size,
            ts = m.version().timestamp,
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringkv {node}</title></head>\
         <body><h1>ringkv node {node}</h1><p>N = {n}, ring digest {digest:016x}</p>\
         <table><tr><th>node</th><th>state</th><th>zone</th><th>load</th></tr>{rows}</table>\
         <h2>Keys on this node</h2><ul>{keys}</ul></body></html>",
        node = escape(state.node.as_str()),
        n = ring.replicas(),
        digest = ring.digest(),
    ))
}
