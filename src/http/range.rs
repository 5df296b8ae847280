//! Parsing of the request headers ringkv interprets: `Range` and the
//! conditional headers. Pure functions over untrusted strings.

/// What a `Range` header asks for, against a value of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole value (200).
    Whole,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the value is in the range (416).
    Unsatisfiable,
}

/// Interprets a `Range` header for a value of `size` bytes. Malformed or
/// multi-range headers are ignored (the whole value is served), as RFC 9110
/// allows.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let Ok(n) = last.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            if n == 0 || size == 0 {
                return RangeRequest::Unsatisfiable;
            }
            RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            }
        }
        // bytes=A- or bytes=A-B
        (false, _) => {
            let Ok(start) = first.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match last.parse::<u64>() {
                    Ok(end) if end >= start => end,
                    _ => return RangeRequest::Whole,
                }
            };
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            RangeRequest::Partial {
                start,
                end: end.min(size - 1),
            }
        }
        (true, true) => RangeRequest::Whole,
    }
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison).
pub fn none_match(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    header.trim() == "*" || header.split(',').any(|t| bare(t) == bare(etag))
}

/// Whether a value last modified at `modified_secs` is unchanged since an
/// `If-Modified-Since` date; unparsable dates are ignored.
pub fn not_modified_since(header: &str, modified_secs: u64) -> bool {
    match httpdate::parse_http_date(header.trim()) {
        Ok(since) => {
            let since = since
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            modified_secs <= since
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            Partial { start: 0, end: 4 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            Partial { start: 8, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=-"), 10), Whole);
    }

    #[test]
    fn conditionals() {
        assert!(none_match("\"a\"", "\"a\""));
        assert!(none_match("W/\"a\", \"b\"", "\"a\""));
        assert!(none_match("*", "\"a\""));
        assert!(!none_match("\"b\"", "\"a\""));
        assert!(not_modified_since("Thu, 01 Jan 1970 00:00:10 GMT", 10));
        assert!(!not_modified_since("Thu, 01 Jan 1970 00:00:10 GMT", 11));
        assert!(!not_modified_since("garbage", 0));
    }

    proptest! {
        #[test]
        fn any_range_header_is_safe(header in "\\PC{0,40}", size in 0u64..1000) {
            match parse_range(Some(&header), size) {
                RangeRequest::Partial { start, end } => {
                    prop_assert!(start <= end && end < size);
                }
                RangeRequest::Whole | RangeRequest::Unsatisfiable => {}
            }
        }
    }
}
