//! Bearer tokens on the public API (F27): the scope each route needs and
//! the middleware that refuses requests without it.
//!
//! Once a token file is given, every route but `/health` and
//! `/health/live` needs `Authorization: Bearer TOKEN` with the route's
//! scope ([`needed_scope`]). A missing or unknown token gets 401 with
//! `WWW-Authenticate: Bearer`, a token without the scope 403 (RFC 6750's
//! `insufficient_scope`), both as JSON errors. A browser asking for the
//! page without a token gets the 401 as a small HTML page instead, which
//! asks for a token, keeps it in the tab's `sessionStorage` and loads the
//! page with it (`status.js`): the data of the page is only ever sent to a
//! request carrying a token.
//!
//! Nothing here logs, echoes or counts a token; the request counter
//! (`metrics::track`, outside this layer) sees only the status.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::access::{Scope, Tokens, Verdict};

/// The scope a request needs, by method and matched route; `None` for the
/// routes open to anyone (health checks, for load balancers and
/// orchestrators).
pub fn needed_scope(method: &Method, route: Option<&str>) -> Option<Scope> {
    let reading = matches!(*method, Method::GET | Method::HEAD);
    match route {
        Some("/health" | "/health/live") => None,
        Some("/metrics") if reading => Some(Scope::Metrics),
        Some("/keys/{*key}" | "/keys/") if matches!(*method, Method::PUT | Method::DELETE) => {
            Some(Scope::Write)
        }
        Some(
            "/" | "/favicon.ico" | "/keys" | "/keys/" | "/keys/{*key}" | "/ring"
            | "/whereis/{*key}" | "/haskey/{*key}",
        ) if reading => Some(Scope::Read),
        // Balance, purge, leave, replicas, removals, and anything unknown.
        _ => Some(Scope::Admin),
    }
}

/// The middleware: lets a request through only with a token of its scope.
pub async fn require(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>();
    let Some(needed) = needed_scope(request.method(), route.map(MatchedPath::as_str)) else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match tokens.current().check(presented, needed) {
        Verdict::Allowed => next.run(request).await,
        Verdict::Missing if wants_page(&request) => locked_page(),
        Verdict::Missing => unauthorized(
            "this node needs an API token: send `Authorization: Bearer TOKEN` (the CLI: --token or RINGKV_TOKEN)",
            r#"Bearer realm="ringkv""#,
        ),
        Verdict::Unknown => unauthorized(
            "the API token is not one this node knows (or the Authorization header is not `Bearer TOKEN`)",
            r#"Bearer realm="ringkv", error="invalid_token""#,
        ),
        Verdict::Forbidden => {
            let scope = needed.as_str();
            let mut response = super::json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!(
                    "this token lacks the {scope} scope that {} {} needs",
                    request.method(),
                    request.uri().path()
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&format!(
                r#"Bearer realm="ringkv", error="insufficient_scope", scope="{scope}""#
            )) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            response
        }
    }
}

/// A 401 as JSON with its `WWW-Authenticate` challenge.
fn unauthorized(message: &str, challenge: &'static str) -> Response {
    let mut response = super::json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// Whether the request is a browser loading a page of `/` (not one of its
/// parts, which the script asks for with the token).
fn wants_page(request: &Request) -> bool {
    let html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    html && request.method() == Method::GET
        && request.uri().path() == "/"
        && !request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("part=")))
}

/// The 401 a browser gets for the page: a form asking for the token (no
/// data of the node), with the page's script, which loads the page with
/// the token once it has one.
fn locked_page() -> Response {
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ringkv · token needed</title>
<link rel="icon" href="data:,">
<style>{style}</style>
</head>
<body data-locked="true">
<header><h1><span class="logo">◍</span> ringkv</h1></header>
<main>
<section id="token-section" class="wide"><h2>API token needed</h2>
<p>This node serves its page only to a holder of an API token (read scope; balance and purge need admin, uploads write). The token is kept for this tab only.</p>
<form id="token-form"><label>Token <input type="password" id="token" autocomplete="off" required></label> <button type="submit">Open</button></form>
<pre id="token-result" class="result" hidden></pre></section>
</main>
<script>{script}</script>
</body></html>
"#,
        style = super::page::STYLE,
        script = super::page::SCRIPT,
    );
    let mut response = (StatusCode::UNAUTHORIZED, Html(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="ringkv""#),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_of_routes() {
        let cases = [
            (Method::GET, Some("/health"), None),
            (Method::GET, Some("/health/live"), None),
            (Method::GET, Some("/keys/{*key}"), Some(Scope::Read)),
            (Method::HEAD, Some("/keys/{*key}"), Some(Scope::Read)),
            (Method::PUT, Some("/keys/{*key}"), Some(Scope::Write)),
            (Method::DELETE, Some("/keys/{*key}"), Some(Scope::Write)),
            (Method::GET, Some("/keys"), Some(Scope::Read)),
            (Method::GET, Some("/whereis/{*key}"), Some(Scope::Read)),
            (Method::GET, Some("/haskey/{*key}"), Some(Scope::Read)),
            (Method::GET, Some("/ring"), Some(Scope::Read)),
            (Method::GET, Some("/"), Some(Scope::Read)),
            (Method::GET, Some("/metrics"), Some(Scope::Metrics)),
            (Method::POST, Some("/balance"), Some(Scope::Admin)),
            (Method::POST, Some("/purge"), Some(Scope::Admin)),
            (Method::POST, Some("/leave"), Some(Scope::Admin)),
            (Method::POST, Some("/replicas"), Some(Scope::Admin)),
            (Method::DELETE, Some("/ring/{*node}"), Some(Scope::Admin)),
            (Method::POST, Some("/keys/{*key}"), Some(Scope::Admin)),
            (Method::GET, None, Some(Scope::Admin)),
        ];
        for (method, route, scope) in cases {
            assert_eq!(needed_scope(&method, route), scope, "{method} {route:?}");
        }
    }
}
