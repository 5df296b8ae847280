//! The public HTTP API (F20), compatible with MyDHT 2026's routes.
//!
//! Owns request parsing (keys from the raw path, quorum parameters, Range
//! and conditional headers) and the mapping of [`Error`] to status codes and
//! JSON bodies; everything else is the coordinator's. Every error, including
//! unknown routes (404) and wrong methods (405), answers with JSON saying
//! what was wrong.

mod admin;
pub mod auth;
pub mod chart;
mod cluster;
mod keys;
pub mod metrics;
mod page;
pub mod range;

pub use self::page::ring_svg;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;

use crate::access::Tokens;
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::ring::NodeId;
use crate::storage::Store;

/// What every handler may use: one `Arc`, cloned for each request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of a node's handlers.
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// This node.
    pub node: NodeId,
    /// Quorum reads and writes.
    pub coordinator: Coordinator,
    /// This node's own store (`/haskey`, `/keys` listing).
    pub store: Store,
    /// Gossip view (`/ring`, `/health`).
    pub membership: Arc<Membership>,
    /// Leave, remove, replication factor.
    pub lifecycle: Lifecycle,
    /// Notified once this node has left the cluster on request: the server
    /// then stops.
    pub left: Arc<tokio::sync::Notify>,
    /// This node's figures (`/metrics`; streams in progress for the page).
    pub metrics: Metrics,
    /// The samples the page's charts draw (this node's and its peers').
    pub charts: chart::SharedCharts,
    /// The API tokens (`--api-token-file`); `None`: the API is open.
    pub tokens: Option<Tokens>,
}

/// The public router.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/", get(page::status_page))
        .route("/favicon.ico", get(keys::favicon))
        .route("/keys", get(keys::list))
        .route("/keys/", get(empty_key).put(empty_key).delete(empty_key))
        .route(
            "/keys/{*key}",
            get(keys::get_value)
                .put(keys::put_value)
                .delete(keys::delete_value),
        )
        .route("/ring", get(cluster::ring))
        .route("/whereis/{*key}", get(cluster::whereis))
        .route("/haskey/{*key}", get(cluster::haskey))
        .route("/health", get(cluster::health))
        .route("/health/live", get(cluster::live))
        .route("/balance", post(admin::balance))
        .route("/purge", post(admin::purge))
        .route("/leave", post(admin::leave))
        .route("/replicas", post(admin::replicas))
        .route("/metrics", get(metrics::metrics))
        .route("/ring/{*node}", delete(admin::remove))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(same_origin_only));
    if let Some(tokens) = state.tokens.clone() {
        router = router.layer(axum::middleware::from_fn_with_state(tokens, auth::require));
    }
    router
        // Outermost, so that refused requests are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Refuses requests that change state when a browser says they come from
/// another site or origin (cross-site request forgery): a page elsewhere,
/// another node's page included, cannot make a visitor's browser balance,
/// purge, delete or write here. Clients that are not browsers (curl, the
/// CLI, other nodes) send neither header and pass.
async fn same_origin_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::Method;
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && let Some(why) = cross_origin(request.headers()) {
        return json_error(
            StatusCode::FORBIDDEN,
            "cross_origin",
            &format!(
                "{} {} refused: {why}; state-changing requests must come from this node's own page or from a client that is not a browser",
                request.method(),
                request.uri().path()
            ),
        );
    }
    next.run(request).await
}

/// Why a request's headers show it comes from another origin, if they do.
fn cross_origin(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("?");
        if site != "same-origin" && site != "none" {
            return Some(format!("the browser says it is {site}"));
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("?");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Some(format!(
            "it comes from origin {origin:?}, not this node ({host})"
        ));
    }
    None
}

async fn empty_key() -> Response {
    ApiError(Error::invalid("the key is empty")).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "no_route",
        &format!("no such route: {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} is not allowed on {}", uri.path()),
    )
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": message, "code": code, "status": status.as_u16() })),
    )
        .into_response()
}

/// An [`Error`] as an HTTP response: its status code and a JSON body.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({
            "error": self.0.to_string(),
            "code": self.0.code(),
            "status": status.as_u16(),
        });
        if let Error::Unavailable {
            needed,
            got,
            answered,
            failed,
        } = &self.0
        {
            body["needed"] = json!(needed);
            body["got"] = json!(got);
            body["answered"] = json!(answered);
            body["failed"] = json!(
                failed
                    .iter()
                    .map(|(node, reason)| json!({ "node": node, "error": reason }))
                    .collect::<Vec<_>>()
            );
        }
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Handler result type.
pub type ApiResult<T> = std::result::Result<T, ApiError>;
