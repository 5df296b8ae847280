//! `GET /metrics` and the counting of every HTTP request.
//!
//! [`track`] is a middleware around every route: it names the request by
//! its matched route and method ([`operation`], a fixed set of names: a
//! key or any other part of the path never becomes a label value), times
//! it to its response headers and counts it by outcome ([`outcome`]).
//! [`metrics`] reads the node's state (store, ring, lifecycle) into
//! [`NodeFigures`] and answers the OpenMetrics text of everything.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiResult, AppState};
use crate::metrics::{
    Direction, Metrics, NodeFigures, RepairFigures, ScrubFigures, TransferFigures,
};

/// What `/metrics` answers with: OpenMetrics text, the format Prometheus
/// asks for first and `prometheus_client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The operation a request asks for, from its matched route (the route's
/// pattern, e.g. `/keys/{*key}`, never the path itself) and its method.
/// `other` for unknown routes and methods a route does not serve.
pub fn operation(method: &Method, route: Option<&str>) -> &'static str {
    let Some(route) = route else {
        return "other";
    };
    match (route, method.as_str()) {
        ("/keys/{*key}" | "/keys/", "GET") => "get",
        ("/keys/{*key}" | "/keys/", "HEAD") => "head",
        ("/keys/{*key}" | "/keys/", "PUT") => "put",
        ("/keys/{*key}" | "/keys/", "DELETE") => "delete",
        ("/keys", "GET" | "HEAD") => "list",
        ("/", "GET" | "HEAD") => "status_page",
        ("/favicon.ico", "GET" | "HEAD") => "favicon",
        ("/ring", "GET" | "HEAD") => "ring",
        ("/ring/{*node}", "DELETE") => "remove",
        ("/whereis/{*key}", "GET" | "HEAD") => "whereis",
        ("/haskey/{*key}", "GET" | "HEAD") => "haskey",
        ("/health" | "/health/live", "GET" | "HEAD") => "health",
        ("/metrics", "GET" | "HEAD") => "metrics",
        ("/balance", "POST") => "balance",
        ("/purge", "POST") => "purge",
        ("/leave", "POST") => "leave",
        ("/replicas", "POST") => "replicas",
        _ => "other",
    }
}

/// How a request ended, by its status ([`crate::metrics::outcome`]).
pub fn outcome(status: StatusCode) -> &'static str {
    crate::metrics::outcome(status.as_u16())
}

/// Middleware: counts and times every request by operation and outcome,
/// and counts the bytes of its body and of its response's as they pass.
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>();
    let operation = operation(request.method(), route.map(MatchedPath::as_str));
    let started = Instant::now();
    let request = request.map(|body| counted(body, metrics.clone(), Direction::In));
    let response = next.run(request).await;
    metrics.request_done(operation, outcome(response.status()), started.elapsed());
    response.map(|body| counted(body, metrics, Direction::Out))
}

/// `body`, counting its data frames' bytes in `direction`. It keeps the
/// body's size hint (`map_frame` would not), so that a response of known
/// length still goes out with its `Content-Length`.
fn counted(body: Body, metrics: Metrics, direction: Direction) -> Body {
    use http_body_util::BodyExt;
    Body::new(body.inspect_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            metrics.http_bytes(direction, data.len());
        }
    }))
}

/// `GET /metrics`: every family in the OpenMetrics text format.
pub async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let text = state.metrics.encode(&figures(&state))?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response())
}

/// What the node is now.
fn figures(state: &AppState) -> NodeFigures {
    let ring = state.coordinator.ring();
    let members = ring
        .members()
        .map(|m| (m.shown_state().as_str(), 1))
        .collect();
    let repair = state.lifecycle.repair_progress();
    let transfer = state.lifecycle.progress();
    let scrub = state.lifecycle.scrub_progress();
    NodeFigures {
        keys: state.store.key_count(),
        disk_bytes: state.store.disk_bytes(),
        hints_pending: state.store.hints_pending(),
        corrupt_copies: state.store.quarantined(),
        members,
        agreed: state.membership.agreed(),
        repair: RepairFigures {
            active: repair.active,
            ranges_done: repair.ranges_done,
            ranges: repair.ranges,
            leaves: repair.leaves,
            pulled: repair.pulled,
            pushed: repair.pushed,
            bytes: repair.bytes,
            tombstones_dropped: repair.tombstones_dropped,
            runs: repair.runs,
        },
        transfer: TransferFigures {
            active: transfer.active,
            records: transfer.keys,
            bytes: transfer.bytes,
            sources_done: transfer.sources_done as u64,
            sources: transfer.sources as u64,
        },
        scrub: ScrubFigures {
            active: scrub.active,
            records: scrub.keys,
            bytes: scrub.bytes,
            runs: scrub.runs,
        },
        disk_free: state.store.disk_free(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_come_from_routes_and_methods_only() {
        let cases = [
            (Method::PUT, Some("/keys/{*key}"), "put"),
            (Method::GET, Some("/keys/{*key}"), "get"),
            (Method::HEAD, Some("/keys/{*key}"), "head"),
            (Method::DELETE, Some("/keys/{*key}"), "delete"),
            (Method::GET, Some("/keys/"), "get"),
            (Method::POST, Some("/keys/{*key}"), "other"),
            (Method::GET, Some("/keys"), "list"),
            (Method::GET, Some("/ring"), "ring"),
            (Method::DELETE, Some("/ring/{*node}"), "remove"),
            (Method::GET, Some("/whereis/{*key}"), "whereis"),
            (Method::GET, Some("/haskey/{*key}"), "haskey"),
            (Method::GET, Some("/health"), "health"),
            (Method::GET, Some("/health/live"), "health"),
            (Method::GET, Some("/metrics"), "metrics"),
            (Method::POST, Some("/balance"), "balance"),
            (Method::POST, Some("/purge"), "purge"),
            (Method::POST, Some("/leave"), "leave"),
            (Method::POST, Some("/replicas"), "replicas"),
            (Method::GET, Some("/"), "status_page"),
            (Method::GET, Some("/favicon.ico"), "favicon"),
            (Method::GET, None, "other"),
        ];
        for (method, route, expected) in cases {
            assert_eq!(operation(&method, route), expected, "{method} {route:?}");
            // The charts read the counters of these names only.
            assert!(crate::metrics::OPERATIONS.contains(&expected), "{expected}");
        }
    }

    #[test]
    fn paths_and_keys_never_become_operations() {
        // Whatever a client sends as a path, only a route pattern can name
        // the operation; raw paths (keys included) all map to `other`.
        let known = crate::metrics::OPERATIONS;
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::POST,
            Method::OPTIONS,
        ];
        let paths = [
            "/keys/secret-key",
            "/keys/put",
            "/whereis/a b",
            "/haskey/ключ",
            "put",
            "",
            "/ring/127.0.0.1:1",
        ];
        for method in &methods {
            for path in paths {
                let op = operation(method, Some(path));
                assert!(known.contains(&op), "{op}");
                assert_eq!(op, "other", "{method} {path}");
            }
        }
    }

    #[test]
    fn outcomes_by_status() {
        let cases = [
            (200, "ok"),
            (201, "ok"),
            (206, "ok"),
            (304, "ok"),
            (400, "client_error"),
            (404, "not_found"),
            (413, "client_error"),
            (416, "client_error"),
            (500, "error"),
            (501, "error"),
            (503, "unavailable"),
            (507, "error"),
        ];
        for (status, expected) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(outcome(status), expected, "{status}");
            assert!(crate::metrics::OUTCOMES.contains(&expected), "{expected}");
        }
    }
}
