//! `/keys`: PUT streams a value in, GET/HEAD streams it out, DELETE writes a
//! tombstone, and `GET /keys` lists this node's keys.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::range::{RangeRequest, none_match, not_modified_since, parse_range};
use super::{ApiError, ApiResult, AppState};
use crate::coordinator::{Expiry, Quorum, ReadResult, WriteResult};
use crate::error::Error;
use crate::metrics::Direction;

/// Key from the raw request path, decoded by us so that every bad key gets
/// a JSON 400 (axum's own decoding would answer in plain text).
fn key_from(uri: &Uri, prefix: &str) -> ApiResult<String> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or_default();
    Ok(crate::key::from_url_path(raw)?)
}

/// `?w=`, `?r=` (1…N or `all`), `?ttl=` (PUT: `30s`, `500ms`, `2h`; a bare
/// number is seconds).
#[derive(Debug, Default, Deserialize)]
pub struct QuorumParams {
    /// Write quorum.
    w: Option<String>,
    /// Read quorum.
    r: Option<String>,
    /// Time to live of the value written (F28).
    ttl: Option<String>,
}

/// The expiry a PUT asks for: `?ttl=` or an `Expires` header (an HTTP
/// date), not both.
fn expiry_of(params: &QuorumParams, headers: &HeaderMap) -> ApiResult<Expiry> {
    let header = headers.get(header::EXPIRES);
    match (&params.ttl, header) {
        (Some(_), Some(_)) => {
            Err(Error::invalid("give either ?ttl= or an Expires header, not both").into())
        }
        (Some(ttl), None) => {
            let ttl = crate::config::parse_duration(ttl)
                .map_err(|e| Error::invalid(format!("bad ?ttl=: {e}")))?;
            if ttl.is_zero() {
                return Err(Error::invalid("?ttl= must be positive").into());
            }
            Ok(Expiry::After(ttl))
        }
        (None, Some(value)) => {
            let at = value
                .to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .ok_or_else(|| Error::invalid("the Expires header is not an HTTP date"))?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1);
            Ok(Expiry::AtMs(ms))
        }
        (None, None) => Ok(Expiry::Never),
    }
}

/// `expires_at` (ms since the epoch) as an HTTP date, rounded up to the
/// second (an HTTP date has no finer unit).
fn http_date_ms(ms: u64) -> String {
    httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(ms.div_ceil(1000)),
    )
}

fn quorum(value: &Option<String>) -> ApiResult<Quorum> {
    match value {
        Some(v) => Ok(v.parse::<Quorum>()?),
        None => Ok(Quorum::Majority),
    }
}

/// The query string, or a clear error when it does not parse.
pub(super) fn params<T: Default>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError(Error::invalid(format!(
            "bad query string: {}",
            e.body_text()
        )))
    })
}

fn write_reply(key: &str, result: &WriteResult, deleted: bool) -> serde_json::Value {
    let mut body = json!({
        "key": key,
        "timestamp": result.version.timestamp,
        "replicas": result.replicas,
        "stored_on": result.stored_on,
        "pending": result.pending,
    });
    if deleted {
        body["deleted"] = json!(true);
    }
    body
}

/// `PUT /keys/{key}`: streams the body to the replicas.
pub async fn put_value(
    State(state): State<AppState>,
    uri: Uri,
    query: Result<Query<QuorumParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let key = key_from(&uri, "/keys/")?;
    let params = params(query)?;
    let w = quorum(&params.w)?;
    let expiry = expiry_of(&params, &headers)?;
    let limit = state.coordinator.max_value_size();
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit
    {
        // Refused before a byte of the body is read.
        return Err(Error::TooLarge {
            size: length,
            limit,
        }
        .into());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let stream = body.into_data_stream().map(|item| {
        item.map_err(|e| Error::Aborted {
            reason: format!("upload broke off: {e}"),
        })
    });
    let result = state
        .coordinator
        .put(&key, &content_type, expiry, Box::pin(stream), w)
        .await?;
    let mut body = write_reply(&key, &result, false);
    if let Some(at) = result.expires_at {
        body["expires"] = json!(at);
    }
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `DELETE /keys/{key}`: writes a tombstone.
pub async fn delete_value(
    State(state): State<AppState>,
    uri: Uri,
    query: Result<Query<QuorumParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let key = key_from(&uri, "/keys/")?;
    let params = params(query)?;
    let result = state.coordinator.delete(&key, quorum(&params.w)?).await?;
    Ok(axum::Json(write_reply(&key, &result, true)).into_response())
}

/// `GET`/`HEAD /keys/{key}`: the newest value, with conditional and range
/// support.
pub async fn get_value(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    query: Result<Query<QuorumParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = key_from(&uri, "/keys/")?;
    let params = params(query)?;
    let found = state.coordinator.get(&key, quorum(&params.r)?).await?;
    serve_value(&state, &method, &headers, found).await
}

/// Builds the response for a value read: headers, 304, 206/416, body.
async fn serve_value(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    found: ReadResult,
) -> ApiResult<Response> {
    let meta = &found.meta;
    let version = meta.version();
    let etag = version.etag();
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(version.unix_seconds()),
    );
    let content_type = if meta.content_type.is_empty() {
        mime_guess::from_path(&meta.key)
            .first_raw()
            .unwrap_or("application/octet-stream")
            .to_string()
    } else {
        meta.content_type.clone()
    };
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-ringkv-timestamp", version.timestamp.to_string());
    if meta.expires_at != 0 {
        // `Expires` in whole seconds, the remaining time in ms beside it.
        let left = meta
            .expires_at
            .saturating_sub(state.coordinator.cluster_now_ms());
        response = response
            .header(header::EXPIRES, http_date_ms(meta.expires_at))
            .header("x-ringkv-ttl-ms", left.to_string());
    }
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let unchanged = match header_str(header::IF_NONE_MATCH) {
        Some(tags) => none_match(tags, &etag),
        None => header_str(header::IF_MODIFIED_SINCE)
            .is_some_and(|since| not_modified_since(since, version.unix_seconds())),
    };
    if unchanged {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(internal);
    }
    let (status, start, end) = match parse_range(header_str(header::RANGE), meta.size) {
        RangeRequest::Whole => (StatusCode::OK, 0, meta.size),
        RangeRequest::Partial { start, end } => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", meta.size),
            );
            (StatusCode::PARTIAL_CONTENT, start, end + 1)
        }
        RangeRequest::Unsatisfiable => {
            return response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", meta.size))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"error": "range not satisfiable", "code": "range", "status": 416, "size": meta.size})
                        .to_string(),
                ))
                .map_err(internal);
        }
    };
    response = response
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, end - start);
    let body = if *method == Method::HEAD {
        Body::empty()
    } else if let Some(value) = &found.value {
        Body::from(value.slice(start as usize..end as usize))
    } else {
        let stream = state
            .coordinator
            .open_value(meta, &found.sources, start, end - start)
            .await?;
        // Counted as a download in progress until the body ends or the
        // client goes away: the body's closure owns the guard, and hyper
        // drops the body either way.
        let streaming = state.metrics.stream_started(Direction::Out);
        Body::from_stream(stream.inspect(move |_| {
            let _owned_by_the_body = &streaming;
        }))
    };
    response.body(body).map_err(internal)
}

fn internal(err: axum::http::Error) -> ApiError {
    ApiError(Error::internal(format!("cannot build the response: {err}")))
}

/// `?prefix=&after=&limit=` of `GET /keys`.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    /// Only keys starting with this.
    prefix: Option<String>,
    /// Only keys sorting after this (the previous page's `next`).
    after: Option<String>,
    /// Page size, 1..=1000 (default 100).
    limit: Option<usize>,
}

/// Largest page of `GET /keys`.
const MAX_LIST_LIMIT: usize = 1000;

/// `GET /keys`: the keys this node stores (not tombstones), paginated.
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let params = params(query)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(Error::invalid(format!("limit must be 1..={MAX_LIST_LIMIT}")).into());
    }
    let prefix = params.prefix.unwrap_or_default();
    let page = state.store.list(&prefix, params.after.as_deref(), limit)?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|m| m.key.clone()))
        .flatten();
    let now_ms = state.coordinator.cluster_now_ms();
    let keys: Vec<serde_json::Value> = page
        .iter()
        .filter(|m| !m.is_dead_at(now_ms))
        .map(|m| {
            let mut entry = json!({
                "key": m.key,
                "timestamp": m.version().timestamp,
                "size": m.size,
                "content_type": m.content_type,
            });
            if m.expires_at != 0 {
                entry["expires"] = json!(m.expires_at);
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!({ "node": state.node, "keys": keys, "next": next })).into_response())
}

/// `GET /favicon.ico`: the value of the key `favicon.ico`, when it exists
/// (read with the default quorum, like any key, so that it is there as soon
/// as its PUT was acknowledged).
pub async fn favicon(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match state.coordinator.get("favicon.ico", Quorum::Majority).await {
        Ok(found) => match serve_value(&state, &method, &headers, found).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        },
        Err(err) => {
            let mut response = ApiError(err).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            response
        }
    }
}
