//! RESP frames on bytes (the wire format only; what a command means is in
//! `cmd/`). Requests are arrays of bulk strings, or inline commands (a line
//! of words, as telnet sends); replies are any RESP2 frame, or RESP3 after
//! `HELLO 3` (a RESP3-only frame is written in its RESP2 form otherwise).
//!
//! The [`Decoder`] is resumable: it consumes each complete element of an
//! array as it arrives and keeps the partial array, so a large pipelined
//! request costs one pass over its bytes however it is split into reads.
//! Limits are checked on the headers, before a body is read: a bulk string
//! longer than the limit, an array of more than [`MAX_ARRAY_ELEMENTS`] or
//! nested deeper than [`MAX_DEPTH`], an inline line over
//! [`MAX_INLINE_BYTES`]. Each is a [`FrameError`], after which the stream
//! cannot be resynchronised: the connection answers it and closes.

use bytes::{Buf, Bytes, BytesMut};

/// Most elements of one request array: Redis's own limit is far higher,
/// but a million-argument MSET is already 16 MiB of headers alone.
pub const MAX_ARRAY_ELEMENTS: usize = 1024 * 1024;
/// Deepest nesting of arrays in a request (clients send depth 1).
pub const MAX_DEPTH: usize = 8;
/// Longest inline command line (Redis: 64 KiB).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Longest header line (`$123\r\n`): a length has at most 20 digits.
const MAX_HEADER_BYTES: usize = 32;

/// One RESP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`: the first word is the error code.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3 foo`.
    Bulk(Bytes),
    /// Nothing: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// A null array: `*-1` in RESP2 (`_` in RESP3).
    NullArray,
    /// `*2 …`.
    Array(Vec<Frame>),
    /// RESP3 map (`%`); in RESP2 a flat array of keys and values.
    Map(Vec<(Frame, Frame)>),
    /// RESP3 set (`~`); in RESP2 an array.
    Set(Vec<Frame>),
    /// RESP3 double (`,`); in RESP2 a bulk string.
    Double(f64),
    /// RESP3 boolean (`#`); in RESP2 the integer 1 or 0.
    Boolean(bool),
    /// RESP3 verbatim text (`=`, format `txt`); in RESP2 a bulk string.
    Verbatim(String),
}

/// The protocol a connection speaks (`HELLO 2|3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

/// Why a request stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A byte or line that is no RESP.
    #[error("Protocol error: {0}")]
    Malformed(String),
    /// A bulk string over the limit, refused before its body is read.
    #[error("Protocol error: invalid bulk length {len} (the limit is {limit} bytes)")]
    BulkTooLong {
        /// The length announced.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// An array with too many elements.
    #[error("Protocol error: invalid multibulk length {0} (the limit is {MAX_ARRAY_ELEMENTS})")]
    TooManyElements(u64),
    /// Arrays nested too deep.
    #[error("Protocol error: arrays nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// An inline command line too long.
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
}

impl Frame {
    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }

    /// `-ERR message`.
    pub fn error(message: impl std::fmt::Display) -> Frame {
        Frame::Error(format!("ERR {message}"))
    }

    /// `-CODE message` (`WRONGTYPE`, `NOPROTO`, `UNAVAILABLE`…).
    pub fn coded(code: &str, message: impl std::fmt::Display) -> Frame {
        Frame::Error(format!("{code} {message}"))
    }

    /// A bulk string of `text`.
    pub fn bulk(text: impl Into<Bytes>) -> Frame {
        Frame::Bulk(text.into())
    }

    /// A bulk string of a `str`.
    pub fn text(text: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Appends the encoding of this frame for `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Frame::Simple(s) => line(out, b'+', s.as_bytes()),
            Frame::Error(s) => line(out, b'-', s.as_bytes()),
            Frame::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Frame::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Frame::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Frame::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
            Frame::Set(items) => {
                let kind = if resp3 { b'~' } else { b'*' };
                line(out, kind, items.len().to_string().as_bytes());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Frame::Double(d) if resp3 => line(out, b',', format_double(*d).as_bytes()),
            Frame::Double(d) => Frame::text(&format_double(*d)).encode(protocol, out),
            Frame::Boolean(b) if resp3 => line(out, b'#', if *b { b"t" } else { b"f" }),
            Frame::Boolean(b) => Frame::Integer(i64::from(*b)).encode(protocol, out),
            Frame::Verbatim(text) if resp3 => {
                line(out, b'=', (text.len() + 4).to_string().as_bytes());
                out.extend_from_slice(b"txt:");
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Verbatim(text) => Frame::text(text).encode(protocol, out),
        }
    }
}

fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        d.to_string()
    }
}

/// A line of `kind`, `body`, CRLF. Error and simple strings come from our
/// own messages: a CR or LF in one would break the stream, so they go.
fn line(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.extend_from_slice(&[kind]);
    if body.iter().any(|b| *b == b'\r' || *b == b'\n') {
        out.extend(
            body.iter()
                .map(|b| if *b == b'\r' || *b == b'\n' { b' ' } else { *b }),
        );
    } else {
        out.extend_from_slice(body);
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads requests off a byte buffer, one element at a time (see the module
/// doc).
#[derive(Debug)]
pub struct Decoder {
    /// Longest bulk string accepted.
    max_bulk: u64,
    /// Arrays begun and not yet complete: elements still expected, and
    /// those read so far.
    stack: Vec<(usize, Vec<Frame>)>,
}

impl Decoder {
    /// A decoder refusing bulk strings over `max_bulk` bytes.
    pub fn new(max_bulk: u64) -> Decoder {
        Decoder {
            max_bulk,
            stack: Vec::new(),
        }
    }

    /// Whether part of a request has been read (a client closing now cut
    /// it short).
    pub fn in_frame(&self) -> bool {
        !self.stack.is_empty()
    }

    /// The next whole request in `buf`, consuming its bytes; `None` when
    /// more bytes are needed (what could be read is consumed and kept).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.stack.is_empty() && !buf.is_empty() && buf[0] != b'*' {
                return self.inline(buf);
            }
            let Some(element) = self.element(buf)? else {
                return Ok(None);
            };
            let mut done = element;
            // Fold the element into the arrays it completes.
            loop {
                match self.stack.last_mut() {
                    None => return Ok(Some(done)),
                    Some((left, items)) => {
                        items.push(done);
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                    }
                }
                let (_, items) = self.stack.pop().unwrap_or_default();
                done = Frame::Array(items);
            }
        }
    }

    /// One element: a whole scalar, or the header of an array (pushed on
    /// the stack; `Some` only for an empty or null one).
    fn element(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            // A simple or error string is a line of text; every other
            // header holds a number.
            let limit = match buf.first() {
                None => return Ok(None),
                Some(b'+' | b'-') => MAX_INLINE_BYTES,
                Some(_) => MAX_HEADER_BYTES,
            };
            let Some(end) = find_crlf(buf, limit)? else {
                return Ok(None);
            };
            let kind = buf[0];
            let number = || parse_number(&buf[1..end]);
            match kind {
                b'*' => {
                    let n = number()?;
                    if n < -1 {
                        return Err(FrameError::Malformed("invalid multibulk length".into()));
                    }
                    if n > MAX_ARRAY_ELEMENTS as i64 {
                        return Err(FrameError::TooManyElements(n as u64));
                    }
                    buf.advance(end + 2);
                    if n <= 0 {
                        return Ok(Some(if n < 0 {
                            Frame::NullArray
                        } else {
                            Frame::Array(Vec::new())
                        }));
                    }
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(FrameError::TooDeep);
                    }
                    // Room grows with what arrives, not with what is announced.
                    let n = n as usize;
                    self.stack.push((n, Vec::with_capacity(n.min(1024))));
                    continue;
                }
                b'$' => {
                    let n = number()?;
                    if n == -1 {
                        buf.advance(end + 2);
                        return Ok(Some(Frame::Null));
                    }
                    if n < 0 {
                        return Err(FrameError::Malformed("invalid bulk length".into()));
                    }
                    let n = n as u64;
                    if n > self.max_bulk {
                        return Err(FrameError::BulkTooLong {
                            len: n,
                            limit: self.max_bulk,
                        });
                    }
                    let n = n as usize;
                    let total = end + 2 + n + 2;
                    if buf.len() < total {
                        // The body comes as it comes: nothing is reserved
                        // for an announced length before it arrives.
                        return Ok(None);
                    }
                    if &buf[total - 2..total] != b"\r\n" {
                        return Err(FrameError::Malformed(
                            "bulk string not ended by CRLF".into(),
                        ));
                    }
                    buf.advance(end + 2);
                    let body = buf.split_to(n).freeze();
                    buf.advance(2);
                    return Ok(Some(Frame::Bulk(body)));
                }
                b':' => {
                    let n = number()?;
                    buf.advance(end + 2);
                    return Ok(Some(Frame::Integer(n)));
                }
                b'+' | b'-' => {
                    let text = String::from_utf8_lossy(&buf[1..end]).into_owned();
                    buf.advance(end + 2);
                    return Ok(Some(if kind == b'+' {
                        Frame::Simple(text)
                    } else {
                        Frame::Error(text)
                    }));
                }
                other => {
                    return Err(FrameError::Malformed(format!(
                        "expected '$', got '{}'",
                        char::from(other).escape_default()
                    )));
                }
            }
        }
    }

    /// An inline command: a line of words, quoted as redis-cli does.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(newline) = buf.iter().position(|b| *b == b'\n') else {
            if buf.len() > MAX_INLINE_BYTES {
                return Err(FrameError::InlineTooLong);
            }
            return Ok(None);
        };
        if newline > MAX_INLINE_BYTES {
            return Err(FrameError::InlineTooLong);
        }
        let line = buf.split_to(newline + 1);
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let words = split_words(text)?;
        Ok(Some(Frame::Array(
            words.into_iter().map(Frame::Bulk).collect(),
        )))
    }
}

/// The position of the CRLF ending the line at the start of `buf`, looked
/// for within `limit` bytes.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    let window = &buf[..buf.len().min(limit)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some(at)),
        None if buf.len() >= limit => Err(FrameError::Malformed("header line too long".into())),
        None => Ok(None),
    }
}

fn parse_number(digits: &[u8]) -> Result<i64, FrameError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            FrameError::Malformed(format!(
                "invalid length or number {:?}",
                String::from_utf8_lossy(digits)
            ))
        })
}

/// Splits an inline command into words: spaces separate, `"…"` (with
/// `\n`, `\xHH`… escapes) and `'…'` quote.
pub fn split_words(line: &[u8]) -> Result<Vec<Bytes>, FrameError> {
    let unbalanced = || FrameError::Malformed("unbalanced quotes in request".into());
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut word = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(unbalanced());
                    };
                    i += 1;
                    match c {
                        b'"' => break,
                        b'\\' => {
                            let Some(&e) = line.get(i) else {
                                return Err(unbalanced());
                            };
                            i += 1;
                            match e {
                                b'n' => word.push(b'\n'),
                                b'r' => word.push(b'\r'),
                                b't' => word.push(b'\t'),
                                b'b' => word.push(8),
                                b'a' => word.push(7),
                                b'x' => {
                                    let hex = line
                                        .get(i..i + 2)
                                        .and_then(|h| std::str::from_utf8(h).ok())
                                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                                    match hex {
                                        Some(b) => {
                                            word.push(b);
                                            i += 2;
                                        }
                                        None => word.push(b'x'),
                                    }
                                }
                                other => word.push(other),
                            }
                        }
                        other => word.push(other),
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(unbalanced());
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(unbalanced());
                    };
                    i += 1;
                    match c {
                        b'\'' => break,
                        b'\\' if line.get(i) == Some(&b'\'') => {
                            word.push(b'\'');
                            i += 1;
                        }
                        other => word.push(other),
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(unbalanced());
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(Bytes::from(word));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max_bulk: u64) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = Decoder::new(max_bulk);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    fn words(frame: &Frame) -> Vec<&[u8]> {
        match frame {
            Frame::Array(items) => items
                .iter()
                .map(|i| match i {
                    Frame::Bulk(b) => b.as_ref(),
                    _ => panic!("not a bulk"),
                })
                .collect(),
            _ => panic!("not an array"),
        }
    }

    #[test]
    fn requests_decode_whole_or_split_anywhere() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n*1\r\n$4\r\nPING\r\nPING\r\n";
        let whole = decode_all(input, 100).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(words(&whole[0]), vec![&b"SET"[..], b"k", b"va\r\nl"]);
        assert_eq!(words(&whole[2]), vec![&b"PING"[..]]);
        // Byte by byte, the same frames.
        let mut decoder = Decoder::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in input {
            buf.extend_from_slice(&[*byte]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, whole);
        assert!(!decoder.in_frame());
    }

    #[test]
    fn limits_are_checked_on_headers() {
        assert_eq!(
            decode_all(b"*1\r\n$1000\r\n", 100),
            Err(FrameError::BulkTooLong {
                len: 1000,
                limit: 100
            })
        );
        assert_eq!(
            decode_all(b"*99999999999\r\n", 100),
            Err(FrameError::TooManyElements(99_999_999_999))
        );
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(decode_all(deep.as_bytes(), 100), Err(FrameError::TooDeep));
        assert!(matches!(
            decode_all(b"*1\r\n$x\r\n", 100),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(b"*1\r\n$3\r\nabcXY", 100),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(b"*1\r\n!3\r\n", 100),
            Err(FrameError::Malformed(_))
        ));
        let long = vec![b'a'; MAX_INLINE_BYTES + 1];
        assert_eq!(decode_all(&long, 100), Err(FrameError::InlineTooLong));
    }

    #[test]
    fn simple_strings_are_lines_not_headers() {
        // Found by the resp fuzz target: a simple string longer than a
        // length header (here once its invalid UTF-8 is replaced) must
        // decode, or our own encoding of it would not.
        let long = format!("*1\r\n+{}\r\n", "é".repeat(40));
        let frames = decode_all(long.as_bytes(), 100).unwrap();
        assert_eq!(
            frames,
            vec![Frame::Array(vec![Frame::Simple("é".repeat(40))])]
        );
        let mut out = BytesMut::new();
        frames[0].encode(Protocol::Resp2, &mut out);
        assert_eq!(&out[..], long.as_bytes());
    }

    #[test]
    fn inline_commands_split_like_redis_cli() {
        let frames = decode_all(b"set \"a b\\x41\\n\" 'it\\'s'\r\nping\n", 100).unwrap();
        assert_eq!(words(&frames[0]), vec![&b"set"[..], b"a bA\n", b"it's"]);
        assert_eq!(words(&frames[1]), vec![&b"ping"[..]]);
        assert!(decode_all(b"set \"unclosed\r\n", 100).is_err());
    }

    #[test]
    fn resp3_frames_fall_back_to_resp2() {
        let frame = Frame::Map(vec![
            (Frame::text("a"), Frame::Boolean(true)),
            (Frame::text("b"), Frame::Double(1.5)),
        ]);
        let mut two = BytesMut::new();
        frame.encode(Protocol::Resp2, &mut two);
        assert_eq!(&two[..], b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$3\r\n1.5\r\n");
        let mut three = BytesMut::new();
        frame.encode(Protocol::Resp3, &mut three);
        assert_eq!(&three[..], b"%2\r\n$1\r\na\r\n#t\r\n$1\r\nb\r\n,1.5\r\n");
        let mut null = BytesMut::new();
        Frame::Null.encode(Protocol::Resp3, &mut null);
        assert_eq!(&null[..], b"_\r\n");
    }

    #[test]
    fn errors_carry_a_code() {
        assert_eq!(Frame::error("bad"), Frame::Error("ERR bad".into()));
        assert_eq!(
            Frame::coded("WRONGTYPE", "Operation"),
            Frame::Error("WRONGTYPE Operation".into())
        );
        let mut out = BytesMut::new();
        Frame::error("two\r\nlines").encode(Protocol::Resp2, &mut out);
        assert_eq!(&out[..], b"-ERR two  lines\r\n");
    }
}
