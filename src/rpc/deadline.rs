//! Deadlines of node-to-node calls, kept by the node called (no ghost
//! writes).
//!
//! A caller says how long it will wait with gRPC's `grpc-timeout` header
//! (tonic's `Request::set_timeout`; every unary call carries the node's
//! `--rpc-timeout`). [`keep`] notes the instant the request was read plus
//! that timeout as the call's [`Deadline`], stops working on the call once
//! it passes (the caller answers `DEADLINE_EXCEEDED` itself and stops
//! listening), and hands the deadline to the handler, which refuses a write
//! whose deadline passed before it was applied: its coordinator counted it
//! as failed, so it must not land later.
//!
//! The deadline is measured on the callee's monotonic clock from the moment
//! it read the request, so nodes' wall clocks (which may be skewed) never
//! enter. What it cannot see is time a request spent in the kernel's buffer
//! while the callee was stopped (SIGSTOP, a frozen VM): writes read right
//! after such a stall are refused by the node's stall watch
//! (`stall.rs`) instead.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

/// The instant a caller stops waiting for this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Whether the caller has stopped waiting.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`), as the gRPC HTTP/2 protocol defines it. `None` for
/// anything else (the call then has no deadline, as without the header).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Middleware of the replica service: gives each call with a
/// `grpc-timeout` its [`Deadline`] and answers `DEADLINE_EXCEEDED` in its
/// place once it passes.
pub async fn keep(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let timeout = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| parse_grpc_timeout(v.as_bytes()));
    let Some(timeout) = timeout else {
        return next.run(request).await;
    };
    let deadline = Instant::now() + timeout;
    request.extensions_mut().insert(Deadline(deadline));
    // Shares the request's bytes: no copy unless the deadline passes.
    let uri = request.uri().clone();
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let path = uri.path();
            tracing::debug!(call = %path, ?timeout, "dropping a call past its caller's deadline");
            tonic::Status::deadline_exceeded(format!(
                "{path}: the caller's deadline ({timeout:?}) passed before it was answered"
            ))
            .into_http::<axum::body::Body>()
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_says() {
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout(b"200m"),
            Some(Duration::from_millis(200))
        );
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"S",
            b"5",
            b"5s",
            b"123456789S",
            b"-5S",
            b"5 S",
            b"\xff",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
